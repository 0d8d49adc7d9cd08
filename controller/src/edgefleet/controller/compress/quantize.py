"""ONNX quantization with onnxruntime's tools (dynamic int8, static int8 in QDQ and QOperator
format, float16). Which static format ships is :mod:`~edgefleet.controller.compress.int8_format`'s
choice; what the result holds in int8 is measured in
:mod:`~edgefleet.controller.compress.int8_coverage`.

Every path runs ``quant_pre_process`` (shape inference + graph optimisation) first. Dynamic mode
quantizes MatMul and LSTM (inside If/Loop/Scan subgraphs too), not Conv: the ConvInteger it would
emit is slow where CPU onnxruntime runs it at all; its quantizer also skips Gemm, so Gemm nodes
with constant weights are rewritten as MatMul + Add first. Static mode does not enter subgraphs
and leaves the float tail (what follows the last heavy operator) float. Convolutions neither
reaches get weight-only int8 (:mod:`~edgefleet.controller.compress.weight_only`).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from edgefleet.controller.compress.compact import (
    all_graphs,
    exact_int8_loadable,
    outer_names,
    subgraphs,
)
from edgefleet.controller.compress.int8_coverage import HEAVY_OPS, float_weight_nodes
from edgefleet.controller.compress.runners import open_cpu_session
from edgefleet.controller.compress.weight_only import quantize_weights_only
from edgefleet.controller.errors import ConversionError, QuantizationBlockedError

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
DYNAMIC_OP_TYPES = ("MatMul", "LSTM")


class FeedReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration inputs (one dict of named arrays per model call) to the calibrator."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = feeds
        self._iter: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def preprocess(src: Path, dst: Path) -> Path:
    """``quant_pre_process``, falling back to ONNX shape inference if symbolic inference fails.

    At opset 10 and below ``quant_pre_process`` would run onnx's version converter to 11 itself,
    unchecked (and its Resize adapter changes what opset-10 models compute), so such a graph, one
    whose checked upgrade was refused, gets ONNX shape inference only.

    Raises:
        QuantizationBlockedError: onnxruntime cannot optimise the graph (names the node).
    """
    model = onnx.load(str(src))
    if any(o.domain in ("", "ai.onnx") and o.version <= 10 for o in model.opset_import):
        onnx.save(onnx.shape_inference.infer_shapes(model), str(dst))
        return dst
    try:
        quant_pre_process(str(src), str(dst))
    except Exception as e:  # noqa: BLE001 - symbolic shape inference raises assorted errors
        log.info("symbolic shape inference failed (%s); using ONNX shape inference", _text(e))
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as e2:
            raise blocked("onnx-int8", e2, "pre-processing") from e2
    return dst


def has_op(model_path: Path, op_types: set[str]) -> bool:
    """Whether the graph holds one of ``op_types``, inside If/Loop/Scan subgraphs too."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return any(n.op_type in op_types for g in all_graphs(graph) for n in g.node)


def quantize_onnx_dynamic(src: Path, dst: Path, work: Path, *, per_channel: bool) -> Path:
    """Dynamic int8: int8 weights, activations quantized at run time (MatMul, LSTM). Conv,
    ConvTranspose and Gemm get weight-only int8 where static mode would do no better: inside
    If/Loop/Scan subgraphs (no calibration reaches them) and anywhere in a recurrent model
    (calibrated activations break those, see :func:`choose_int8_mode`); a feed-forward
    model's top-level convolutions are left to static mode.

    Raises:
        QuantizationBlockedError, ConversionError: the quantizer fails (named where it can be).
    """
    pre = preprocess(src, work / "dynamic-pre.onnx")
    rewritten = work / "dynamic-matmul.onnx"
    onnx.save(gemm_to_matmul(onnx.load(str(pre))), str(rewritten))
    try:
        quantize_dynamic(
            rewritten,
            dst,
            op_types_to_quantize=list(DYNAMIC_OP_TYPES),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"EnableSubgraph": True},
        )
    except Exception as e:
        raise blocked("onnx-int8", e, "dynamic quantization") from e
    _weights_only(dst, subgraphs_only=not is_recurrent(onnx.load(str(pre))))
    return dst


QuantFormatName = Literal["QOperator", "QDQ"]
STATIC_FORMATS: tuple[QuantFormatName, ...] = ("QDQ", "QOperator")
# Activations: int8 in QDQ, which onnxruntime rewrites to uint8 on x86 before fusing it into
# integer kernels (its QDQ S8-to-U8 pass); uint8 in QOperator, whose kernels run as stored: x86
# has no fast signed-activation QLinearConv (ppocr-det's 3x3 convolutions 4x slower in int8).
# Asymmetric activations use all 256 levels either way, so both give the same numbers.
ACTIVATION_TYPES: dict[QuantFormatName, QuantType] = {
    "QDQ": QuantType.QInt8,
    "QOperator": QuantType.QUInt8,
}


def quantize_onnx_static(
    src: Path,
    work: Path,
    calibration: Sequence[Feed],
    *,
    per_channel: bool,
    formats: Sequence[QuantFormatName] = STATIC_FORMATS,
) -> dict[QuantFormatName, Path]:
    """Static int8, one file per format in ``formats`` (calibrated once where onnxruntime keeps a
    calibration cache): int8 weights (per channel when asked) and calibrated int8 activations,
    except the float tail (see :func:`float_tail`); heavy operators the calibrator cannot reach
    (inside If/Loop/Scan subgraphs) or the format has no integer kernel for (QOperator's
    ConvTranspose) get weight-only int8 (Conv, ConvTranspose, Gemm; MatMul and LSTM in
    subgraphs are left to :func:`quantize_leftovers_dynamic`).

    QDQ stores every activation as a QuantizeLinear/DequantizeLinear pair around float
    operators (onnxruntime fuses them back into integer kernels when it loads the graph);
    QOperator stores the integer kernels themselves (QLinearConv with a per-channel weight
    scale vector, QLinearMatMul, QGemm, QLinearAdd, ...), without the pairs, their scalars and
    the bias scales; its activations are uint8 (see :data:`ACTIVATION_TYPES`).

    Raises:
        QuantizationBlockedError, ConversionError: calibration or the quantizer fails.
    """
    pre = preprocess(src, work / "static-pre.onnx")
    model = onnx.load(str(pre))
    name_nodes(model)
    tail = float_tail(model)
    onnx.save(model, str(pre))
    ranges = work / "static-ranges.json"
    ranges.unlink(missing_ok=True)
    built: dict[QuantFormatName, Path] = {}
    for name in formats:
        dst = work / f"model-int8-static-{name.lower()}.onnx"
        try:
            quantize_static(
                pre,
                dst,
                FeedReader(calibration),
                quant_format=QuantFormat.QDQ if name == "QDQ" else QuantFormat.QOperator,
                per_channel=per_channel,
                activation_type=ACTIVATION_TYPES[name],
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=tail,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                **_calibration_cache(ranges),
            )
        except Exception as e:
            raise blocked("onnx-int8", e, f"static quantization ({name})") from e
        _weights_only(dst, subgraphs_only=False)
        built[name] = dst
    return built


def _calibration_cache(path: Path) -> dict[str, Path]:
    """``calibration_cache_path`` where this onnxruntime has it (1.32 and later): the first
    format's calibration ranges serve the others, the same numbers without a second run."""
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        return {"calibration_cache_path": path}
    return {}


def _weights_only(path: Path, *, subgraphs_only: bool) -> None:
    """Weight-only int8 where the quantizer left float, and every integer weight its reader's
    own (see :func:`~edgefleet.controller.compress.compact.exact_int8_loadable`)."""
    model = onnx.load(str(path))
    done = quantize_weights_only(model, subgraphs_only=subgraphs_only)
    if done:
        log.info("weight-only int8 for %d operators (%s, ...)", len(done), done[0].node)
    exact_int8_loadable(model)
    onnx.save(model, str(path))


def name_nodes(model: onnx.ModelProto) -> None:
    """A unique name for every unnamed top-level node (quantizers select nodes by name)."""
    names = {node.name for node in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in names:
                node.name += "_"
            names.add(node.name)


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Top-level nodes after which no heavy operator follows: what computes the outputs (and
    any state a caller feeds back) from the last convolution, matrix product or recurrent cell.
    Static int8 leaves them float: int8 there would only round what the caller reads, and a
    rounded state fed back compounds its error call after call."""
    graph = model.graph
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in {*node.input, *outer_names(node)}:
            readers.setdefault(name, []).append(i)
    tail: set[int] = set()
    for i in reversed(range(len(graph.node))):
        node = graph.node[i]
        if node.op_type in HEAVY_OPS or _holds_heavy(node):
            continue
        if all(r in tail for out in node.output if out for r in readers.get(out, [])):
            tail.add(i)
    return [graph.node[i].name for i in sorted(tail)]


def _holds_heavy(node: onnx.NodeProto) -> bool:
    return any(
        inner.op_type in HEAVY_OPS
        for sub in subgraphs(node)
        for graph in all_graphs(sub)
        for inner in graph.node
    )


def quantize_leftovers_dynamic(src: Path, dst: Path, *, per_channel: bool) -> list[str]:
    """Dynamic int8 for the MatMul and LSTM nodes a static pass left float (inside If/Loop/Scan
    subgraphs, which the static quantizer does not enter, and recurrent operators, which it does
    not quantize). Writes ``dst`` only when there are some; returns their names.

    Raises:
        QuantizationBlockedError, ConversionError: the quantizer fails.
    """
    names = float_weight_nodes(onnx.load(str(src)), DYNAMIC_OP_TYPES)
    if not names:
        return []
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=list(DYNAMIC_OP_TYPES),
            nodes_to_quantize=names,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"EnableSubgraph": True},
        )
    except Exception as e:
        raise blocked("onnx-int8", e, "dynamic quantization of what static left float") from e
    model = onnx.load(str(dst))
    exact_int8_loadable(model)
    onnx.save(model, str(dst))
    return names


def convert_onnx_fp16(src: Path, dst: Path) -> Path:
    """float16 weights and compute, float32 inputs and outputs (``keep_io_types``)."""
    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    except Exception as e:
        raise ConversionError("onnx-fp16", str(e)) from e
    onnx.save(model, str(dst))
    return dst


RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})


def is_recurrent(model: onnx.ModelProto) -> bool:
    """Whether an LSTM, GRU or RNN is anywhere in the model, subgraphs included."""
    return any(n.op_type in RECURRENT_OPS for g in all_graphs(model.graph) for n in g.node)


def choose_int8_mode(
    model_path: Path, mode: Literal["auto", "dynamic", "static"], has_calibration: bool
) -> Literal["dynamic", "static"]:
    """Static when asked, or in ``auto`` for convolutional graphs (subgraphs included) with
    calibration data, unless the model is recurrent anywhere: calibrated int8 activations break
    such models (Silero VAD keeps 86 % of its speech decisions static even with its fed-back
    state and outputs left float, int8 audio and spectrum at its front end alone costing 5-8 %;
    99 % dynamic, its convolutions weight-only)."""
    if mode != "auto":
        return mode
    if is_recurrent(onnx.load(str(model_path))):
        return "dynamic"
    if has_calibration and has_op(model_path, {"Conv", "ConvTranspose"}):
        return "static"
    return "dynamic"


# --- onnxruntime at the seam -------------------------------------------------------------------


def ort_session(path: Path, *, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session; ``optimize=False`` runs the graph exactly as written (for comparisons)."""
    return open_cpu_session(str(path), optimize=optimize, quiet=True)[0]


def check_feeds(model_path: Path, feeds: Sequence[Feed]) -> None:
    """Every feed names the model's inputs with their declared rank and element type.

    Raises:
        QuantizationBlockedError: naming the first input that does not fit.
    """
    graph = onnx.load(str(model_path), load_external_data=False).graph
    stored = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in stored:
            continue
        tensor = value.type.tensor_type
        want = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
        for feed in feeds:
            if value.name not in feed:
                raise QuantizationBlockedError("onnx-int8", f"input {value.name!r}", "no data")
            arr = feed[value.name]
            if rank is not None and arr.ndim != rank:
                raise QuantizationBlockedError(
                    "onnx-int8",
                    f"input {value.name!r}",
                    f"the model takes rank {rank}, the data has shape {list(arr.shape)}",
                )
            if want is not None and arr.dtype != want:
                raise QuantizationBlockedError(
                    "onnx-int8",
                    f"input {value.name!r}",
                    f"the model takes {np.dtype(want).name}, the data is {arr.dtype.name}",
                )


def run_feed(session: ort.InferenceSession, feed: Feed) -> list[np.ndarray]:
    """Outputs of one call, after checking the feed against the session's inputs by name.

    Raises:
        QuantizationBlockedError: an input is missing or has the wrong rank or type, or a node
            fails (each named).
    """
    for arg in session.get_inputs():
        if arg.name not in feed:
            raise QuantizationBlockedError("onnx-int8", f"input {arg.name!r}", "no data for it")
        arr = feed[arg.name]
        if len(arg.shape) != arr.ndim:
            raise QuantizationBlockedError(
                "onnx-int8",
                f"input {arg.name!r}",
                f"the model takes rank {len(arg.shape)} {list(arg.shape)}, the data has shape "
                f"{list(arr.shape)}",
            )
    try:
        return list(session.run(None, feed))
    except Exception as e:
        raise blocked("onnx-int8", e, "running the model") from e


_NODE_PATTERNS = (
    re.compile(r'In Node, \("([^"]*)", (\w+),'),
    re.compile(r"running (\w+) node\. Name:'([^']*)'"),
    re.compile(r"Node \(([^)]*)\) Op \((\w+)\)"),
)
_INPUT_PATTERN = re.compile(r"for input: ['\"]?([^'\"\s,]+)")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_LOCATION = re.compile(r"/onnxruntime_src/\S+:\d+ (?:[^()]*\([^()]*\) )?")


def blocked(target: str, error: Exception, during: str) -> ConversionError:
    """A foreign exception turned into an error naming the node or input that caused it."""
    blocker, text = describe_failure(error)
    if blocker:
        return QuantizationBlockedError(target, blocker, f"{during}: {text}")
    return ConversionError(target, f"{during}: {type(error).__name__}: {text}")


def describe_failure(error: Exception) -> tuple[str | None, str]:
    """(``node 'name' (OpType)`` or ``input 'name'`` when the message names one, the message on
    one line without onnxruntime's prefix and source paths)."""
    text = _text(error)
    for i, pattern in enumerate(_NODE_PATTERNS):
        match = pattern.search(text)
        if match:
            name, op = (match.group(2), match.group(1)) if i == 1 else match.groups()
            return f"node {name!r} ({op})", text
    match = _INPUT_PATTERN.search(text)
    return (f"input {match.group(1)!r}" if match else None), text


def _text(error: Exception) -> str:
    """One line of an onnxruntime / quantizer message, without its prefix and source paths."""
    text = " ".join(str(error).split())
    text = _SOURCE_LOCATION.sub("", _ORT_PREFIX.sub("", text))
    return (text or type(error).__name__)[:400]


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, B, C)`` with constant B, alpha = beta = 1, transA = 0 as MatMul + Add."""
    inits = {i.name: i for i in model.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rewritable = (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and attrs.get("transA", 0) == 0
        )
        if not rewritable:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(weight), weight_name)
        )
        replaced.add(node.input[1])
        has_bias = len(node.input) > 2 and node.input[2] != ""
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], weight_name], [matmul_out], name=f"{node.name}_mm"
            )
        )
        if has_bias:
            new_nodes.append(
                helper.make_node(
                    "Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_add"
                )
            )
    still_used = {i for n in new_nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name not in replaced or i.name in still_used]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
