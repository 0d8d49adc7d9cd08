"""Weight-only int8 for heavy operators no activation quantizer reaches: convolutions and dense
layers inside If/Loop/Scan subgraphs (calibration cannot see there) and operator types a static
pass left float (QOperator format has no integer ConvTranspose kernel). Each float weight is
stored as symmetric int8 with a float scale (one per output channel from opset 13, where
DequantizeLinear takes an axis) behind a DequantizeLinear named as the weight was, so the
operator runs in float on the dequantized weight: about 4x fewer bytes for those weights, float
arithmetic, and no integer kernel a CPU may lack."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefleet.controller.compress.compact import all_graphs, fold_constants, graph_tree

WEIGHT_ONLY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})
_INT8_MAX = 127


@dataclass(frozen=True)
class WeightOnlyNode:
    """One operator given int8 weights: its name (or first output) and the weight's size."""

    node: str
    op_type: str
    weights: int
    in_subgraph: bool


def quantize_weights_only(model: onnx.ModelProto, *, subgraphs_only: bool) -> list[WeightOnlyNode]:
    """Int8 weights for every Conv, ConvTranspose and Gemm of ``model`` (in place) whose weight
    is a float32 initializer used only as such weights (a tensor also read elsewhere, as a
    shape or a value, stays float); with ``subgraphs_only``, inside If/Loop/Scan bodies only.
    Scales are per output channel from opset 13 (per tensor below): with float activations
    nothing else bounds the error, and one scale per tensor is too coarse for convolutions
    (Silero VAD's speech probabilities: 0.86 off per tensor, 0.085 per channel). Constant
    nodes are folded into initializers first. Returns what was quantized."""
    from edgefleet.controller.compress.opset import PER_CHANNEL_OPSET, ai_onnx_opset  # cycle

    fold_constants(model)
    per_channel = ai_onnx_opset(model) >= PER_CHANNEL_OPSET
    taken = {
        name
        for graph in all_graphs(model.graph)
        for name in (
            *(t.name for t in graph.initializer),
            *(out for node in graph.node for out in node.output),
            *(v.name for v in graph.input),
        )
    }
    reads = Counter(
        name
        for graph in all_graphs(model.graph)
        for name in (
            *(i for node in graph.node for i in node.input),
            *(v.name for v in (*graph.output, *graph.input)),
        )
    )
    as_weight = Counter(
        node.input[1]
        for graph in all_graphs(model.graph)
        for node in graph.node
        if node.op_type in WEIGHT_ONLY_OPS and len(node.input) > 1
    )
    done: list[WeightOnlyNode] = []
    for path, graph in graph_tree(model.graph):
        if subgraphs_only and not path:
            continue
        stored = {t.name: t for t in graph.initializer}
        dequantize: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type not in WEIGHT_ONLY_OPS or len(node.input) < 2:
                continue
            weight = stored.get(node.input[1])
            if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) < 2:
                continue
            if reads[weight.name] != as_weight[weight.name]:
                continue  # read as something other than a weight
            axis = _output_axis(node) if per_channel else None
            dequantize.append(_replace_with_int8(graph, weight, axis, taken))
            del stored[weight.name]  # shared by several nodes: quantized once
            done.append(
                WeightOnlyNode(
                    node.name or node.output[0],
                    node.op_type,
                    int(np.prod(weight.dims)),
                    bool(path),
                )
            )
        if dequantize:
            nodes = [*dequantize, *graph.node]
            del graph.node[:]
            graph.node.extend(nodes)
    return done


def _output_axis(node: onnx.NodeProto) -> int:
    """The weight axis of output channels: Conv [M, C/g, k...], ConvTranspose [C, M/g, k...],
    Gemm B [K, N] or, transposed, [N, K]."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if trans_b else 1


def _int8(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 values and their scales (one, or one per index along ``axis``)."""
    if axis is None:
        peak = np.abs(values).max(initial=0.0)
    else:
        moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        peak = np.abs(moved).max(axis=1, initial=0.0)
    scale = np.where(peak > 0, peak / _INT8_MAX, 1.0).astype(np.float32)
    shape = [1] * values.ndim
    if axis is not None:
        shape[axis] = -1
    quantized = np.clip(np.rint(values / scale.reshape(shape)), -_INT8_MAX, _INT8_MAX)
    return quantized.astype(np.int8), scale


def _replace_with_int8(
    graph: onnx.GraphProto, weight: onnx.TensorProto, axis: int | None, taken: set[str]
) -> onnx.NodeProto:
    """Swap the float initializer ``weight`` for int8 values and a scale; the DequantizeLinear
    returned computes a tensor of the weight's name from them. Per channel it also reads an
    all-zero zero point: onnxruntime's exact-int8 mode on x86 fails on a per-axis one without
    (see :func:`~edgefleet.controller.compress.compact.exact_int8_loadable`)."""
    quantized, scale = _int8(numpy_helper.to_array(weight).astype(np.float32), axis)
    name = weight.name
    int8_name, scale_name = (_fresh(f"{name}_{suffix}", taken) for suffix in ("int8", "scale"))
    kept = [t for t in graph.initializer if t.name != name]
    kept += [
        numpy_helper.from_array(quantized, int8_name),
        numpy_helper.from_array(scale, scale_name),
    ]
    inputs = [int8_name, scale_name]
    if scale.size > 1:
        inputs.append(_fresh(f"{name}_zero_point", taken))
        kept.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), inputs[-1]))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    node = helper.make_node("DequantizeLinear", inputs, [name])
    if axis is not None and axis != 1:  # 1 is DequantizeLinear's default
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name
