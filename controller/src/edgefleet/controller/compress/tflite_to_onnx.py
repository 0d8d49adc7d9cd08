"""``onnx-fp32`` from a float TFLite file with tf2onnx (the ``tensorflow`` extra), presenting the
TFLite model's signature: its input and output names as LiteRT gives them (the serving
signature's where the file has exactly one, else the tensors' own), its output order, its layout
(NHWC stays NHWC). The other ONNX targets are built from that graph as from any ONNX model.

tf2onnx names the graph's inputs and outputs after the TFLite tensors; they are renamed here to
the signature's names, and the converted graph is compared with the TFLite model on evaluation
samples before anything is built from it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import onnx

from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.evaluate import run_data
from edgefleet.controller.compress.runners import LiteRtRunner, OnnxRunner
from edgefleet.controller.compress.signatures import (
    conversion_errors,
    require_same_signature,
)
from edgefleet.controller.compress.tensorflow_extra import (
    captured_output,
    import_tf2onnx,
    log_tail,
)
from edgefleet.controller.errors import ConversionError, UnconvertibleNodeError
from edgefleet.shared.manifest import IOSignature

TARGET = "onnx-fp32"
CONVERTER = "tf2onnx"
CHECK_SAMPLES = 32
# fp32 to fp32 (float16 weights widen exactly): within 1 % of an output's peak is the same
# computation; a wrong layout or a wrong mapping is off by the size of the values themselves.
MAX_REL_ERROR = 1e-2
_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def tflite_to_onnx(
    source: Path, signature: IOSignature, dst: Path, opset: int, check: Dataset
) -> dict[str, Any]:
    """Convert the float TFLite ``source`` (whose LiteRT signature is ``signature``) into the
    ONNX file ``dst``; returns its report details.

    ``check`` is single-call evaluation data the result is compared with the TFLite model on.

    Raises:
        MissingExtraError: tf2onnx or TensorFlow is not installed (naming the extra).
        UnconvertibleNodeError: tf2onnx has no conversion for one of the model's operators.
        ConversionError: tf2onnx fails otherwise (with the end of its log), its graph does not
            map onto the signature, or its outputs differ from the TFLite model's.
        SignatureMismatchError: the result's inputs or outputs differ from the TFLite model's.
    """
    tf2onnx = import_tf2onnx(f"{TARGET} from a TFLite model")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    log = dst.with_suffix(".log")
    try:
        # tf2onnx reads shapes through tf.lite.Interpreter, which warns it is deprecated
        with captured_output(log), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model, _ = tf2onnx.convert.from_tflite(str(source), opset=opset)
    except Exception as e:  # tf2onnx and TensorFlow raise many unrelated types
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        ends = f"; its log ends:\n{log_tail(text)}" if text.strip() else ""
        raise ConversionError(TARGET, f"{CONVERTER}: {log_tail(str(e))}{ends}") from e
    _refuse_unconverted(model)
    _name_like_source(model, boundary_names(source), signature)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(TARGET, f"{CONVERTER} wrote an invalid graph: {e}") from e
    onnx.save(model, str(dst))
    samples = check.take(slice(0, min(CHECK_SAMPLES, check.size)))
    errors = conversion_errors(
        run_data(LiteRtRunner(source), samples),
        run_data(OnnxRunner(dst), samples),
        target=TARGET,
        source="TFLite",
    )
    for name, (abs_error, rel_error) in errors.items():
        if not rel_error <= MAX_REL_ERROR:
            raise ConversionError(
                TARGET,
                f"{CONVERTER}'s output {name!r} differs from the TFLite model's by up to "
                f"{abs_error:.3g} ({rel_error:.1%} of its peak) on {samples.size} evaluation "
                f"samples; at most {MAX_REL_ERROR:.0%} is a faithful float conversion",
            )
    require_same_signature(
        TARGET, signature, OnnxRunner(dst).signature, reference="the TFLite model"
    )
    return {
        "built_from": f"the TFLite model, converted by {CONVERTER} {tf2onnx.__version__} "
        f"(opset {opset}; float16 weights widened to float32)",
        "conversion_check": {
            "samples": samples.size,
            "max_abs_error": max((e for e, _ in errors.values()), default=0.0),
            "max_rel_error": max((r for _, r in errors.values()), default=0.0),
        },
    }


def boundary_names(path: Path) -> dict[str, str]:
    """The main graph's input and output tensor names, each mapped to the name LiteRT gives it:
    its serving signature's where the file has exactly one, else the tensor's own name.

    Raises:
        ConversionError: the file is not a readable TFLite model.
    """
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        graph = model.Subgraphs(0)
    except Exception as e:  # a corrupt flatbuffer fails in many ways
        raise ConversionError(TARGET, f"{path.name} is not a readable TFLite model ({e})") from e

    def tensor_name(index: int) -> str:
        return str(graph.Tensors(index).Name().decode())

    boundary = [int(graph.Inputs(i)) for i in range(graph.InputsLength())]
    boundary += [int(graph.Outputs(i)) for i in range(graph.OutputsLength())]
    names = {tensor_name(i): tensor_name(i) for i in boundary}
    if model.SignatureDefsLength() == 1:  # what LiteRT's signature runner (and the agent) uses
        signature = model.SignatureDefs(0)
        entries = [signature.Inputs(i) for i in range(signature.InputsLength())]
        entries += [signature.Outputs(i) for i in range(signature.OutputsLength())]
        for entry in entries:
            names[tensor_name(int(entry.TensorIndex()))] = str(entry.Name().decode())
    return names


def _refuse_unconverted(model: onnx.ModelProto) -> None:
    """tf2onnx converts on past an operator it cannot translate and leaves it in the graph as
    ``TFL_<OP>``: no ONNX runtime runs that."""
    for node in _nodes(model.graph):
        if node.op_type.startswith("TFL_") or node.domain not in _ONNX_DOMAINS:
            op = node.op_type.removeprefix("TFL_")
            raise UnconvertibleNodeError(
                TARGET, CONVERTER, node.name, op, f"it has no ONNX conversion for {op} operators"
            )


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (a WHILE becomes a Loop with a body)."""
    found = []
    for node in graph.node:
        found.append(node)
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for sub in (*subgraphs, *attribute.graphs):
                found.extend(_nodes(sub))
    return found


def _name_like_source(
    model: onnx.ModelProto, names: dict[str, str], signature: IOSignature
) -> None:
    """Rename the graph's inputs and outputs from TFLite tensor names to the signature's (see
    :func:`boundary_names`), outputs in the signature's order.

    Raises:
        ConversionError: a boundary tensor is not one of the TFLite model's, the graph's inputs
            or outputs are not the signature's, or a new name is taken by another tensor.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in initializers]
    outputs = [v.name for v in graph.output]
    unknown = [n for n in (*inputs, *outputs) if n not in names]
    if unknown:
        raise ConversionError(
            TARGET, f"{CONVERTER} made boundary tensors {unknown} the TFLite model does not have"
        )
    renames = {n: names[n] for n in (*inputs, *outputs) if names[n] != n}
    want_in = sorted(s.name for s in signature.inputs)
    want_out = [s.name for s in signature.outputs]
    got_in, got_out = sorted(names[n] for n in inputs), [names[n] for n in outputs]
    if got_in != want_in or sorted(got_out) != sorted(want_out):
        raise ConversionError(
            TARGET,
            f"{CONVERTER}'s graph takes {got_in} and gives {got_out}; the TFLite model takes "
            f"{want_in} and gives {want_out}",
        )
    taken = {v for node in _nodes(graph) for v in node.output} | initializers | set(inputs)
    clash = sorted(new for old, new in renames.items() if new in taken and new not in renames)
    if clash:
        raise ConversionError(
            TARGET, f"cannot rename the graph's boundary to {clash}: other tensors hold the names"
        )
    if renames:
        _rename(graph, renames)
    by_name = {v.name: v for v in graph.output}
    ordered = [onnx.ValueInfoProto() for _ in want_out]
    for value, name in zip(ordered, want_out, strict=True):
        value.CopyFrom(by_name[name])
    graph.ClearField("output")
    graph.output.extend(ordered)


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename tensors everywhere they are named, subgraphs included (they see the outer
    scope's tensors by name)."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for sub in (*subgraphs, *attribute.graphs):
                _rename(sub, renames)
