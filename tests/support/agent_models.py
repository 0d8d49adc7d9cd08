"""Tiny real models for agent tests: ONNX graphs via onnx.helper, TFLite flatbuffers via the
LiteRT schema (float with several dynamic inputs, and int8 in/out with quantization params).

Each builder writes one file and returns the numbers needed to sign a manifest for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.shared.manifest import IOSignature, TensorSpec

OPSET = 17


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    signature: IOSignature
    target: str
    reference: object  # callable(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _spec(name: str, dtype: str, shape: tuple[int | None, ...]) -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, shape=shape)  # type: ignore[arg-type]


def linear_classifier(
    path: Path, seed: int, *, fixed_batch: bool = False, hidden: int = 0
) -> BuiltModel:
    """x float32 [N,4] -> logits float32 [N,3] = x @ W + b.

    ``fixed_batch`` reshapes x to [1,4] first: batch 1 works, larger batches fail at run time
    (a model that passes validation and then errors in service). ``hidden`` adds a hidden
    layer of that width (a slower model for benchmarks).
    """
    rng = np.random.default_rng(seed)
    nodes = []
    inits = []
    source = "x"
    if fixed_batch:
        inits.append(numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "fixed_shape"))
        nodes.append(helper.make_node("Reshape", ["x", "fixed_shape"], ["x_fixed"]))
        source = "x_fixed"
    weights = []
    width = 4
    if hidden:
        w1 = rng.standard_normal((4, hidden)).astype(np.float32) * 0.5
        inits.append(numpy_helper.from_array(w1, "W1"))
        nodes += [
            helper.make_node("MatMul", [source, "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
        ]
        weights.append(w1)
        source, width = "hr", hidden
    w = rng.standard_normal((width, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    inits += [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes += [
        helper.make_node("MatMul", [source, "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = inputs["x"]
        for w1 in weights:
            h = np.maximum(h @ w1, 0)
        return {"logits": (h @ w + b).astype(np.float32)}

    signature = IOSignature(
        inputs=(_spec("x", "float32", (None, 4)),), outputs=(_spec("logits", "float32", (None, 3)),)
    )
    return BuiltModel(path, signature, "onnx-fp32", reference)


def multi_input(path: Path) -> BuiltModel:
    """features float32 [N,D] and ids int64 [N] (both dims dynamic) -> score float32 [N]."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=0),
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["total", "ids_f"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", "D"]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [axes],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"score": (inputs["features"].sum(axis=1) + inputs["ids"]).astype(np.float32)}

    signature = IOSignature(
        inputs=(_spec("features", "float32", (None, None)), _spec("ids", "int64", (None,))),
        outputs=(_spec("score", "float32", (None,)),),
    )
    return BuiltModel(path, signature, "onnx-fp32", reference)


def nan_model(path: Path) -> BuiltModel:
    """x float32 [N,4] -> y = sqrt(x - 1000): NaN for any ordinary input."""
    shift = numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "shift")
    nodes = [helper.make_node("Sub", ["x", "shift"], ["d"]), helper.make_node("Sqrt", ["d"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [shift],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.sqrt(np.maximum(inputs["x"], 0)).astype(np.float32)}  # what it should do

    signature = IOSignature(
        inputs=(_spec("x", "float32", (None, 4)),), outputs=(_spec("y", "float32", (None, 4)),)
    )
    return BuiltModel(path, signature, "onnx-fp32", reference)


# -- TFLite ---------------------------------------------------------------------------------


def tflite_bytes(
    tensors: list[Any],
    buffers: list[Any],
    operators: list[Any],
    opcodes: list[Any],
    inputs: list[int],
    outputs: list[int],
) -> bytes:
    """A one-subgraph TFLite flatbuffer of LiteRT schema objects (``TensorT``, ``BufferT``,
    ``OperatorT``, ``OperatorCodeT``); buffer 0, the empty one, is added in front."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT()
    model.version = 3
    model.description = "edgefleet test model"
    model.buffers = [s.BufferT(), *buffers]
    model.operatorCodes = opcodes
    subgraph = s.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = inputs
    subgraph.outputs = outputs
    subgraph.operators = operators
    subgraph.name = "main"
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_tensor(
    name: str,
    shape: Sequence[int],
    kind: int,
    buffer: int = 0,
    signature: Sequence[int] | None = None,
    quant: tuple[float, int] | None = None,
) -> Any:
    """A ``TensorT`` of TensorType ``kind``; ``signature`` is its shape with -1 for a dynamic
    dimension, ``quant`` its (scale, zero point)."""
    from ai_edge_litert import schema_py_generated as s

    tensor = s.TensorT()
    tensor.name = name
    tensor.shape = list(shape)
    tensor.shapeSignature = list(signature) if signature else None
    tensor.type = kind
    tensor.buffer = buffer
    if quant is not None:
        q = s.QuantizationParametersT()
        q.scale = [float(quant[0])]
        q.zeroPoint = [int(quant[1])]
        tensor.quantization = q
    return tensor


def tflite_opcode(code: int, version: int) -> Any:
    """An ``OperatorCodeT`` for builtin operator ``code`` at ``version``."""
    from ai_edge_litert import schema_py_generated as s

    opcode = s.OperatorCodeT()
    opcode.builtinCode = code
    opcode.deprecatedBuiltinCode = min(code, 127)
    opcode.version = version
    return opcode


def tflite_add(path: Path) -> BuiltModel:
    """Float TFLite: a [N,4] + b [N,4] -> total [N,4], batch dynamic (two inputs)."""
    from ai_edge_litert import schema_py_generated as s

    f32 = s.TensorType.FLOAT32
    tensors = [
        tflite_tensor("a", (1, 4), f32, signature=(-1, 4)),
        tflite_tensor("b", (1, 4), f32, signature=(-1, 4)),
        tflite_tensor("total", (1, 4), f32, signature=(-1, 4)),
    ]
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = [0, 1], [2]
    op.builtinOptionsType = s.BuiltinOptions.AddOptions
    op.builtinOptions = s.AddOptionsT()
    path.write_bytes(
        tflite_bytes(tensors, [], [op], [tflite_opcode(s.BuiltinOperator.ADD, 1)], [0, 1], [2])
    )

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"total": (inputs["a"] + inputs["b"]).astype(np.float32)}

    signature = IOSignature(
        inputs=(_spec("a", "float32", (None, 4)), _spec("b", "float32", (None, 4))),
        outputs=(_spec("total", "float32", (None, 4)),),
    )
    return BuiltModel(path, signature, "tflite-fp32", reference)


IN_Q = (0.05, 3)
OUT_Q = (0.1, -2)
W_SCALE = 0.02


def tflite_int8_classifier(path: Path, seed: int = 7) -> BuiltModel:
    """Full-int8 TFLite: int8 x [1,4] (scale 0.05, zp 3) -> FULLY_CONNECTED -> int8 logits [1,3]
    (scale 0.1, zp -2). The signed signature says float32: the agent (de)quantizes."""
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    w_q = rng.integers(-100, 100, size=(3, 4), dtype=np.int8)
    b_q = rng.integers(-500, 500, size=3).astype(np.int32)
    bias_scale = IN_Q[0] * W_SCALE
    buffers = []
    for array in (w_q, b_q):
        buf = s.BufferT()
        buf.data = list(array.tobytes())
        buffers.append(buf)
    i8, i32 = s.TensorType.INT8, s.TensorType.INT32
    tensors = [
        tflite_tensor("x", (1, 4), i8, quant=IN_Q),
        tflite_tensor("weights", (3, 4), i8, buffer=1, quant=(W_SCALE, 0)),
        tflite_tensor("bias", (3,), i32, buffer=2, quant=(bias_scale, 0)),
        tflite_tensor("logits", (1, 3), i8, quant=OUT_Q),
    ]
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = [0, 1, 2], [3]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    code = tflite_opcode(s.BuiltinOperator.FULLY_CONNECTED, 4)
    path.write_bytes(tflite_bytes(tensors, buffers, [op], [code], [0], [3]))

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        xq = np.clip(np.round(inputs["x"] / IN_Q[0] + IN_Q[1]), -128, 127)
        acc = (xq - IN_Q[1]) @ w_q.T.astype(np.float64) + b_q
        yq = np.clip(np.round(acc * bias_scale / OUT_Q[0] + OUT_Q[1]), -128, 127)
        return {"logits": ((yq - OUT_Q[1]) * OUT_Q[0]).astype(np.float32)}

    signature = IOSignature(
        inputs=(_spec("x", "float32", (1, 4)),), outputs=(_spec("logits", "float32", (1, 3)),)
    )
    return BuiltModel(path, signature, "tflite-full-int8", reference)


def mlp(path: Path, seed: int, sizes: tuple[int, ...] = (784, 256, 10)) -> BuiltModel:
    """x float32 [N, sizes[0]] -> logits float32 [N, sizes[-1]]: dense layers with ReLU between
    (a small "real" model for benchmarks)."""
    rng = np.random.default_rng(seed)
    nodes, inits, weights = [], [], []
    source = "x"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        weights.append((w, b))
        inits += [numpy_helper.from_array(w, f"W{layer}"), numpy_helper.from_array(b, f"B{layer}")]
        last = layer == len(sizes) - 2
        out = "logits" if last else f"h{layer}"
        nodes += [
            helper.make_node("MatMul", [source, f"W{layer}"], [f"m{layer}"]),
            helper.make_node("Add", [f"m{layer}", f"B{layer}"], [out if last else f"a{layer}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{layer}"], [out]))
        source = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = inputs["x"].astype(np.float32)
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = np.maximum(h, 0)
        return {"logits": h.astype(np.float32)}

    signature = IOSignature(
        inputs=(_spec("x", "float32", (None, sizes[0])),),
        outputs=(_spec("logits", "float32", (None, sizes[-1])),),
    )
    return BuiltModel(path, signature, "onnx-fp32", reference)


_LITERT_TORCH = """
import sys
import numpy as np
import torch
import litert_torch

class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        return self.linear(x) + y.sum(dim=1, keepdim=True)

torch.manual_seed(0)
module = TwoInputs().eval()
litert_torch.convert(module, (torch.randn(1, 4), torch.randn(1, 2))).export(sys.argv[1])
linear = module.linear
np.savez(sys.argv[2], w=linear.weight.detach().numpy(), b=linear.bias.detach().numpy())
"""


def litert_torch_two_inputs(path: Path) -> BuiltModel:
    """A torch module with two inputs converted by ``litert_torch`` (in a child process, so the
    test process never imports torch). Names are those of the converter's serving signature."""
    import subprocess
    import sys

    weights = path.with_suffix(".npz")
    subprocess.run(
        [sys.executable, "-c", _LITERT_TORCH, str(path), str(weights)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with np.load(weights) as saved:
        w, b = saved["w"], saved["b"]

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, y = inputs["args_0"], inputs["args_1"]
        out = x @ w.T + b + y.sum(axis=1, keepdims=True)
        return {"output_0": out.astype(np.float32)}

    signature = IOSignature(
        inputs=(
            _spec("args_0", "float32", (1, 4)),
            _spec("args_1", "float32", (1, 2)),
        ),
        outputs=(_spec("output_0", "float32", (1, 3)),),
    )
    return BuiltModel(path, signature, "tflite-fp32", reference)
