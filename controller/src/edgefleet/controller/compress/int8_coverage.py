"""What a quantized ONNX graph really holds in int8: its heavy operators (convolutions, matrix
products, recurrent cells; inside If/Loop/Scan subgraphs too) and whether their constant weights
are 8-bit integers, followed back through DequantizeLinear and shape-only nodes; and where the
file's bytes go (:func:`artifact_bytes`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgefleet.controller.compress.compact import all_graphs, subgraphs

# Operators whose constant weights hold a model's size and arithmetic, and the inputs holding them.
HEAVY_OPS: dict[str, tuple[int, ...]] = {
    "Conv": (1,), "ConvTranspose": (1,), "MatMul": (1,), "Gemm": (1,),
    "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2),
}  # fmt: skip
# Integer kernels the quantizers emit: the heavy operator each replaces, and its weight inputs.
INTEGER_OPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "QLinearConv": ("Conv", (3,)), "ConvInteger": ("Conv", (1,)),
    "QLinearMatMul": ("MatMul", (3,)), "MatMulInteger": ("MatMul", (1,)),
    "DynamicQuantizeMatMul": ("MatMul", (1,)), "MatMulIntegerToFloat": ("MatMul", (1,)),
    "QGemm": ("Gemm", (3,)), "DynamicQuantizeLSTM": ("LSTM", (1, 2)),
}  # fmt: skip
# Nodes a constant weight may pass through on its way to the operator using it.
_PASS_THROUGH = frozenset({"Identity", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten"})
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_INTEGER_TYPES = frozenset(
    {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
)


@dataclass(frozen=True)
class Int8Coverage:
    """Heavy operators of a quantized graph (subgraphs included), by kind, and their weights."""

    heavy_ops: dict[str, int]  # weight-bearing heavy operators, int8 or float
    quantized_ops: dict[str, int]  # those whose weights are 8-bit integers
    int8_weights: int  # weight values in 8-bit integers (each tensor counted once)
    float_weights: int  # weight values of heavy operators left in float
    float_in_subgraphs: tuple[str, ...]  # If/Loop/Scan nodes holding heavy operators left float

    @property
    def weight_share(self) -> float:
        total = self.int8_weights + self.float_weights
        return self.int8_weights / total if total else 0.0

    def as_details(self) -> dict[str, Any]:
        return {
            "int8_heavy_ops": dict(self.quantized_ops),
            "int8_weight_share": round(self.weight_share, 4),
            "int8_weights": self.int8_weights,
            "float_heavy_weights": self.float_weights,
        }


def heavy_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Heavy operators with constant weights in a float graph, by kind (subgraphs included)."""
    consts = _Constants(model)
    return dict(
        Counter(
            node.op_type
            for node, _ in _walk(model.graph)
            if node.op_type in HEAVY_OPS and _weights(node, HEAVY_OPS[node.op_type], consts)
        )
    )


def int8_coverage(model: onnx.ModelProto) -> Int8Coverage:
    """Which heavy operators of a quantized graph carry 8-bit integer weights: integer kernels
    (QLinearConv, ConvInteger, MatMulInteger, ...) and float kernels fed by DequantizeLinear of an
    integer constant (QDQ); weight tensors shared by several nodes are counted once."""
    consts = _Constants(model)
    heavy: Counter[str] = Counter()
    quantized: Counter[str] = Counter()
    int8: dict[str, int] = {}
    floating: dict[str, int] = {}
    holders: list[str] = []
    for node, holder in _walk(model.graph):
        if node.op_type in INTEGER_OPS:
            kind, indices = INTEGER_OPS[node.op_type]
            weights = [w for w in _weights(node, indices, consts) if w[1] in _INTEGER_TYPES]
            if weights:
                heavy[kind] += 1
                quantized[kind] += 1
                int8.update((name, size) for name, _, size in weights)
        elif node.op_type in HEAVY_OPS:
            weights = _weights(node, HEAVY_OPS[node.op_type], consts)
            if not weights:
                continue  # activations times activations: nothing stored to quantize
            heavy[node.op_type] += 1
            if all(dtype in _INTEGER_TYPES for _, dtype, _ in weights):
                quantized[node.op_type] += 1
                int8.update((name, size) for name, _, size in weights)
            else:
                floating.update((n, s) for n, t, s in weights if t not in _INTEGER_TYPES)
                if holder and holder not in holders:
                    holders.append(holder)
    return Int8Coverage(
        heavy_ops=dict(heavy),
        quantized_ops=dict(quantized),
        int8_weights=sum(int8.values()),
        float_weights=sum(floating.values()),
        float_in_subgraphs=tuple(holders),
    )


class _Constants:
    """Every constant tensor of a model (initializers and Constant nodes, subgraphs included)
    and the node producing each value, to follow a weight back to where it is stored."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.tensors: dict[str, tuple[int, int]] = {}  # name -> (elem type, element count)
        self.producers: dict[str, onnx.NodeProto] = {}
        self.shapes: dict[str, tuple[int, int]] = {}  # value_info: name -> (elem type, count)
        self._folded: dict[str, bool] = {}
        self._collect(model.graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            self.tensors[init.name] = (init.data_type, int(np.prod(init.dims, dtype=np.int64)))
        for info in graph.value_info:
            tensor = info.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
            self.shapes[info.name] = (tensor.elem_type, int(np.prod(dims, dtype=np.int64)))
        for node in graph.node:
            for out in node.output:
                self.producers[out] = node
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        size = int(np.prod(attr.t.dims, dtype=np.int64))
                        self.tensors[node.output[0]] = (attr.t.data_type, size)
            for sub in subgraphs(node):
                self._collect(sub)

    def resolve(self, name: str, depth: int = 0) -> tuple[str, int, int] | None:
        """(stored tensor, elem type, elements) behind ``name``, through DequantizeLinear and
        shape-only nodes, or a value computed from constants alone (not folded yet); None for a
        value computed from activations."""
        if name in self.tensors:
            return (name, *self.tensors[name])
        node = self.producers.get(name)
        if node is None or not node.input:
            return None
        if depth < 16 and (node.op_type == "DequantizeLinear" or node.op_type in _PASS_THROUGH):
            stored = self.resolve(node.input[0], depth + 1)
            if stored is not None:
                return stored
        if self._from_constants(name, 0):
            return (name, *self.shapes.get(name, (onnx.TensorProto.FLOAT, 0)))
        return None

    def _from_constants(self, name: str, depth: int) -> bool:
        if name in self.tensors:
            return True
        if name not in self._folded:
            node = self.producers.get(name)
            self._folded[name] = (
                node is not None
                and depth < 64
                and bool(node.input)
                and node.op_type not in _CONTROL_FLOW
                and all(not i or self._from_constants(i, depth + 1) for i in node.input)
            )
        return self._folded[name]


def _weights(
    node: onnx.NodeProto, indices: tuple[int, ...], consts: _Constants
) -> list[tuple[str, int, int]]:
    found = []
    for i in indices:
        if i < len(node.input) and node.input[i]:
            weight = consts.resolve(node.input[i])
            if weight is None:
                return []
            found.append(weight)
    return found


def _walk(graph: onnx.GraphProto, holder: str = "") -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node with the outermost If/Loop/Scan node holding it ('' at the top level)."""
    for node in graph.node:
        yield node, holder
        if node.op_type in _CONTROL_FLOW:
            for sub in subgraphs(node):
                yield from _walk(sub, holder or node.name or node.output[0])


def float_weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``op_types`` (subgraphs included) whose constant weights are all
    still float: what a dynamic pass can still quantize after a static one."""
    consts = _Constants(model)
    names = []
    for node, _ in _walk(model.graph):
        if node.op_type in op_types and node.op_type in HEAVY_OPS and node.name:
            weights = _weights(node, HEAVY_OPS[node.op_type], consts)
            if weights and all(dtype not in _INTEGER_TYPES for _, dtype, _ in weights):
                names.append(node.name)
    return names


_QUANTIZED_KERNELS = frozenset({"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16})
_BIAS_SLOTS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "QLinearConv": 8}


def artifact_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Where the bytes of a (quantized) ONNX file go, by what each stored tensor is for
    (subgraphs included): int8 weights, float weights of heavy operators, biases, per-channel
    scales, scalars (activation scales and zero points, constants), other tensors; the rest is
    graph structure (nodes, names, attributes, Constant nodes)."""
    graphs = list(all_graphs(model.graph))
    readers: dict[str, list[tuple[str, int]]] = {}
    for graph in graphs:
        for node in graph.node:
            for i, name in enumerate(node.input):
                readers.setdefault(name, []).append((node.op_type, i))
    found: Counter[str] = Counter()
    for graph in graphs:
        for tensor in graph.initializer:
            found[_role(tensor, readers.get(tensor.name, []))] += tensor.ByteSize()
    found["graph structure"] = model.ByteSize() - sum(found.values())
    return dict(found)


def _role(tensor: onnx.TensorProto, readers: list[tuple[str, int]]) -> str:
    size = int(np.prod(tensor.dims, dtype=np.int64))
    if size <= 1:
        return "scalars"
    if tensor.data_type in _INTEGER_TYPES:
        return "int8 weights"
    if tensor.data_type == onnx.TensorProto.INT32:
        return "int32 biases"
    if tensor.data_type not in _FLOAT_TYPES:
        return "other tensors"
    if any(op in HEAVY_OPS and i in HEAVY_OPS[op] for op, i in readers):
        return "float heavy weights"
    if any(_BIAS_SLOTS.get(op) == i for op, i in readers):
        return "float biases"
    if readers and all(op in _QUANTIZED_KERNELS or op in INTEGER_OPS or op.startswith("QLinear")
                       or op == "Mul" for op, _ in readers):  # fmt: skip
        return "per-channel scales"
    return "other tensors"
