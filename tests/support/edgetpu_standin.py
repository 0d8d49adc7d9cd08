"""A stand-in for an edgetpu_compiler output, for tests on machines without the compiler or an
Edge TPU: a real full-integer TFLite rewritten the way a fully mapped compile comes out, every
operator replaced by one ``edgetpu-custom-op`` between the model's own input and output tensors.

It is not a compiled model: no Edge TPU could run it, and the CPU cannot either (LiteRT has no
kernel for the custom op). What it is good for is everything that reads the file without running
it: the controller's import checks and the agent's refusal without the delegate.
"""

from __future__ import annotations

from pathlib import Path


def edgetpu_compiler_standin(cpu_model: Path, dst: Path, *, scale: float | None = None) -> Path:
    """Write a stand-in for ``edgetpu_compiler cpu_model`` to ``dst``: the graph delegated whole
    to one ``edgetpu-custom-op`` (its options carry the first bytes of the original model, as a
    compiled program carries its own), input and output tensors kept as they are. ``scale``
    changes the output's quantization scale, as a compile of a different model would have it.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    buf = cpu_model.read_bytes()
    model = s.ModelT.InitFromPackedBuf(buf, 0)
    graph = model.subgraphs[0]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
    code.customCode = "edgetpu-custom-op"
    code.version = 1
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = list(graph.inputs), list(graph.outputs)
    op.customOptions = list(buf[: min(len(buf), 256)])
    graph.operators = [op]
    model.operatorCodes = [code]
    if scale is not None:
        graph.tensors[int(graph.outputs[0])].quantization.scale = [scale]
    builder = flatbuffers.Builder(len(buf) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst
