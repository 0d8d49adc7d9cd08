"""Compacting a built ONNX artifact, exactly: what a runtime does not read (shape notes, doc
strings, node names, attributes at their defaults, all-zero zero points of stored tensors) is
dropped; what it reads is stored once (Constant nodes as initializers, identical tensors merged
across subgraphs, bias scales derived from the two scales they are the product of); internal
tensors get the shortest names, the most used first. A quantizer's derived names and per-tensor
bookkeeping are a third of a small int8 model; the graph's inputs and outputs keep their names,
so its signature is unchanged, and every output is computed from the same numbers. Both int8
formats compact: QDQ's QuantizeLinear/DequantizeLinear pairs and QOperator's integer kernels
(QLinearConv, QGemm, ...), whose bias scales need no deriving (the kernels compute them)."""

from __future__ import annotations

import hashlib
import math
import string
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Scales the quantizer stores once per bias although they are x_scale * w_scale (QDQ format;
# QOperator's integer kernels derive them themselves).
_BIAS_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})
_KERNEL_OPS = frozenset({"Conv", "ConvTranspose", "QLinearConv"})  # kernel_shape = W.shape[2:]
# Defaults the ONNX spec states in words rather than in the schema (all 1 / all 0 when absent).
_SPATIAL_OPS = frozenset(
    {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "MaxPool", "AveragePool", "LpPool"}
)
_SPATIAL_DEFAULTS = {"dilations": 1, "strides": 1, "pads": 0}
_FIRST = string.ascii_letters + "_"
_REST = _FIRST + string.digits
_MIN_DERIVED_SCALE = 5  # a Mul node costs what about four stored floats do
GraphPath = tuple[int, ...]
_ValueKey = tuple[GraphPath, str]  # a value: the graph defining it and its name there


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def graph_tree(
    graph: onnx.GraphProto, path: GraphPath = ()
) -> Iterator[tuple[GraphPath, onnx.GraphProto]]:
    """``all_graphs`` with each graph's path from ``graph`` (node, attribute and graph indices
    per level): a key that stays valid across walks, which ``id()`` of a protobuf view is not."""
    yield path, graph
    for i, node in enumerate(graph.node):
        for j, attribute in enumerate(node.attribute):
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from graph_tree(attribute.g, (*path, i, j, 0))
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for k, sub in enumerate(attribute.graphs):
                    yield from graph_tree(sub, (*path, i, j, k))


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def compact_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` compacted (see the module docstring); in place, and returned."""
    fold_constants(model)
    _drop_zero_points(model)
    _derive_bias_scales(model)
    _rename(model)  # unique names in every scope first: merged tensors may then move up a scope
    exact_int8_loadable(model)
    subgraph_weights_to_uint8(model)
    _merge_duplicates(model)
    _drop_default_attributes(model)
    _drop_unused_initializers(model)
    _rename(model)
    _drop_unused_opsets(model)
    model.doc_string = ""
    for graph in all_graphs(model.graph):
        graph.doc_string = ""
        del graph.value_info[:]
        for value in (*graph.input, *graph.output, *graph.initializer):
            value.doc_string = ""
        for node in graph.node:
            node.name = ""
            node.doc_string = ""
    return model


def compact_file(path: Path) -> int:
    """Compact the ONNX file at ``path`` in place; the bytes saved."""
    before = path.stat().st_size
    model = compact_model(onnx.load(str(path)))
    onnx.save(model, str(path))
    return before - path.stat().st_size


# --- storing each number once ------------------------------------------------------------------


def fold_constants(model: onnx.ModelProto) -> int:
    """Constant nodes holding a tensor become initializers of their graph (a node costs a few
    dozen bytes more than an initializer, and quantizers only look for weights there); the
    number folded. Models below IR 4 keep them: their initializers must be graph inputs."""
    if model.ir_version < 4:
        return 0
    folded = 0
    for graph in all_graphs(model.graph):
        outputs = {value.name for value in graph.output}
        kept = []
        for node in graph.node:
            tensor = _constant_tensor(node) if node.output[0] not in outputs else None
            if tensor is None:
                kept.append(node)
                continue
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            folded += 1
        if folded:
            del graph.node[:]
            graph.node.extend(kept)
    return folded


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    value = helper.get_attribute_value(attribute)
    if attribute.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        return tensor
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}  # fmt: skip
    if attribute.name not in dtypes:
        return None  # strings and sparse tensors stay as they are
    return numpy_helper.from_array(np.asarray(value, dtypes[attribute.name]))


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for graph in all_graphs(model.graph) for t in graph.initializer}


def _drop_zero_points(model: onnx.ModelProto) -> None:
    """DequantizeLinear of a stored tensor (weights, biases) reads a missing zero point as 0 of
    the tensor's type, so an all-zero one (symmetric weights, int32 biases) is dropped, except
    a per-channel 8-bit one: onnxruntime's exact-int8 mode on x86 without VNNI (see
    :func:`~edgefleet.controller.compress.runners.cpu_session_options`) rewrites those weights
    to uint8 and fails on a per-axis DequantizeLinear without its zero point. A per-channel
    all-zero weight zero point of QLinearConv (QOperator format) becomes one scalar. QGemm and
    QLinearMatMul keep theirs: onnxruntime wants it shaped as the scale."""
    stored = _initializers(model)

    def zeros(name: str, like: str | None = None) -> bool:
        zero, other = stored.get(name), stored.get(like) if like else None
        if zero is None or (
            like is not None and (other is None or other.data_type != zero.data_type)
        ):
            return False
        return not numpy_helper.to_array(zero).any()

    for graph in all_graphs(model.graph):
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and len(node.input) == 3:
                if zeros(node.input[2], like=node.input[0]) and not _per_axis_8bit(
                    stored[node.input[2]]
                ):
                    del node.input[2]
            elif node.op_type == "QLinearConv" and zeros(node.input[5]):
                zero = stored[node.input[5]]
                if len(zero.dims) != 1 or zero.dims[0] < 2:
                    continue
                name = f"{zero.name}_scalar"
                if name not in stored:
                    dtype = helper.tensor_dtype_to_np_dtype(zero.data_type)
                    stored[name] = numpy_helper.from_array(np.zeros((), dtype), name)
                    graph.initializer.append(stored[name])
                node.input[5] = name


def _per_axis_8bit(zero_point: onnx.TensorProto) -> bool:
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return zero_point.data_type in eight_bit and math.prod(zero_point.dims) > 1


def _derive_bias_scales(model: onnx.ModelProto) -> None:
    """A QDQ bias ``DequantizeLinear(b_int32, s_b)`` of a Conv/ConvTranspose/Gemm whose ``s_b``
    is bit for bit ``x_scale * w_scale`` (float32, as a Mul computes it) gets that Mul instead
    of a stored copy: one float per output channel saved, the same numbers fed."""
    stored = _initializers(model)
    uses = Counter(
        name for graph in all_graphs(model.graph) for n in graph.node for name in n.input
    )
    taken = set(stored) | {out for g in all_graphs(model.graph) for n in g.node for out in n.output}
    for graph in all_graphs(model.graph):
        producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
        derived: dict[int, onnx.NodeProto] = {}  # bias DQ index -> the Mul to put before it
        for node in graph.node:
            if node.op_type not in _BIAS_OPS or len(node.input) < 3:
                continue
            found = [producers.get(name) for name in node.input[:3]]
            dqs = [graph.node[i] for i in found if i is not None]
            if len(dqs) != 3 or any(q.op_type != "DequantizeLinear" for q in dqs):
                continue
            names = [q.input[1] for q in dqs]
            if not all(name in stored for name in names) or uses[names[2]] != 1:
                continue
            x_scale, w_scale, b_scale = (numpy_helper.to_array(stored[n]) for n in names)
            product = np.multiply(x_scale, w_scale, dtype=np.float32)
            if b_scale.size < _MIN_DERIVED_SCALE or product.shape != b_scale.shape:
                continue
            if product.dtype != b_scale.dtype or product.tobytes() != b_scale.tobytes():
                continue
            out = f"{names[2]}_derived"
            while out in taken:
                out += "_"
            taken.add(out)
            bias_dq = found[2]
            assert bias_dq is not None
            derived[bias_dq] = helper.make_node("Mul", names[:2], [out])
            dqs[2].input[1] = out
        if derived:
            nodes = [m for i, node in enumerate(graph.node) for m in (derived.get(i), node)]
            del graph.node[:]
            graph.node.extend(m for m in nodes if m is not None)


# Where each integer kernel reads its weight and the weight's zero point (QGemm, QAttention and
# the dynamic kernels are com.microsoft's); DequantizeLinear of a stored tensor reads them at 0, 2.
_WEIGHT_INPUTS = {
    "DequantizeLinear": (0, 2),
    "QLinearConv": (3, 5),
    "QLinearMatMul": (3, 5),
    "QGemm": (3, 5),
    "MatMulIntegerToFloat": (1, 5),
    "MatMulInteger": (1, 3),
    "ConvInteger": (1, 3),
    "DynamicQuantizeMatMul": (1, 3),
    "QAttention": (1, 7),
    "DynamicQuantizeLSTM": (1, 9),
}


def _weight_slots(node: onnx.NodeProto, stored: dict[str, onnx.TensorProto]) -> tuple[int, ...]:
    """The inputs of ``node`` that hold a stored int8 weight or that weight's zero point (the
    ones onnxruntime's exact-int8 mode rewrites; uint8 weights run exact as they are)."""
    slots = _WEIGHT_INPUTS.get(node.op_type)
    if slots is None or len(node.input) <= slots[0]:
        return ()
    weight = stored.get(node.input[slots[0]])
    if weight is None or weight.data_type != onnx.TensorProto.INT8:
        return ()
    extra = (2, 11) if node.op_type == "DynamicQuantizeLSTM" else ()  # R and its zero point
    return tuple(i for i in (*slots, *extra) if i < len(node.input) and node.input[i])


def _integer_weights(model: onnx.ModelProto) -> set[str]:
    """Names of the stored int8 weights integer kernels and DequantizeLinear read, with their
    zero points, in any graph."""
    names: set[str] = set()
    for graph in all_graphs(model.graph):
        visible = {t.name: t for t in graph.initializer}
        for node in graph.node:
            names.update(node.input[i] for i in _weight_slots(node, visible))
    return names


def exact_int8_loadable(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite ``model`` so that onnxruntime's exact-int8 mode on x86 (see
    :func:`~edgefleet.controller.compress.runners.cpu_session_options`) can load it, computing
    the same numbers: every reader of a stored 8-bit weight (or its zero point) gets its own
    copy, every consumer of a DequantizeLinear of one its own DequantizeLinear, and every
    per-axis DequantizeLinear of one an explicit zero point.

    That mode rewrites each such weight and zero point to uint8 beside it, under a name derived
    from the tensor's, after copying a DequantizeLinear per consumer: it fails on a graph in
    which two readers share one, and gives a per-axis DequantizeLinear without a zero point a
    scalar one it then refuses; and it looks for a weight in its reader's own graph only,
    leaving one held by an enclosing graph to the saturating kernels, so each subgraph gets
    its own copy. A shared quantized constant (the 3 of a hard-swish read by every block)
    costs a few bytes per reader; a weight two If branches read, one copy per branch.

    Returns what was rewritten, by kind (zero when the model was loadable already)."""
    taken = {t.name for g in all_graphs(model.graph) for t in g.initializer}
    taken |= {v.name for g in all_graphs(model.graph) for v in (*g.input, *g.output)}
    taken |= {out for g in all_graphs(model.graph) for n in g.node for out in n.output}

    def fresh(base: str) -> str:
        k = 1
        while f"{base}_{k}" in taken:
            k += 1
        taken.add(f"{base}_{k}")
        return f"{base}_{k}"

    done = {
        "subgraph weight held outside": _local_integer_weights(model, fresh),
        "shared DequantizeLinear": 0,
        "shared weight": 0,
        "per-axis without zero point": 0,
    }
    for graph in all_graphs(model.graph):
        done["shared DequantizeLinear"] += _one_dequantize_per_consumer(graph, fresh)
        done["shared weight"] += _one_weight_per_reader(graph, fresh)
        done["per-axis without zero point"] += _explicit_axis_zero_points(graph, fresh)
    return done


def exact_int8_blockers(model: onnx.ModelProto) -> str | None:
    """What in ``model`` onnxruntime's exact-int8 mode cannot load (see
    :func:`exact_int8_loadable`), e.g. ``"2 shared weight"``; None when nothing. ``model`` is
    left as it is."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    found = exact_int8_loadable(copy)
    return ", ".join(f"{n} {kind}" for kind, n in found.items() if n) or None


def subgraph_weights_to_uint8(model: onnx.ModelProto) -> int:
    """Store the int8 weights of integer kernels inside subgraphs as uint8 (values and zero
    points shifted by 128: the same numbers), as onnxruntime's exact-int8 mode would at load
    time. Its uint8 kernels are exact on every CPU without that rewrite, so such a weight may
    then be held once by an enclosing graph for readers in several subgraphs (the two
    sample-rate branches of a VAD reading one LSTM cell). Each weight must be its reader's
    own, in its reader's graph (see :func:`exact_int8_loadable`). Returns the nodes changed."""
    changed = 0
    for path, graph in graph_tree(model.graph):
        if not path:
            continue
        stored = {t.name: t for t in graph.initializer}
        for node in graph.node:
            slots = _weight_slots(node, stored)
            if not slots or node.op_type == "DequantizeLinear":  # float compute follows
                continue
            weights, zero_at = _WEIGHT_INPUTS[node.op_type]
            pairs = [(weights, zero_at)]
            if node.op_type == "DynamicQuantizeLSTM":
                pairs.append((2, 11))  # W and R share one type: both or neither
            # the weights and their zero points, all stored here as int8 (a missing zero point
            # would need one shaped as the kernel wants: such a node stays as it is)
            names = [node.input[i] if i < len(node.input) else "" for pair in pairs for i in pair]
            if not all(
                name in stored and stored[name].data_type == onnx.TensorProto.INT8 for name in names
            ):
                continue
            for name in names:
                _shift_to_uint8(stored[name])
            changed += 1
    return changed


def _shift_to_uint8(tensor: onnx.TensorProto) -> None:
    values = numpy_helper.to_array(tensor).astype(np.int16) + 128
    tensor.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), tensor.name))


def _local_integer_weights(model: onnx.ModelProto, fresh: Callable[[str], str]) -> int:
    """Copy into each subgraph the 8-bit weights (and zero points) its nodes read from an
    enclosing graph: onnxruntime's rewrite looks for a weight in its reader's own graph only,
    and leaves one it does not find there to the saturating kernels."""
    graphs = dict(graph_tree(model.graph))
    copies = 0
    for path, graph in graphs.items():
        if not path:
            continue
        outer: dict[str, onnx.TensorProto] = {}
        for depth in range(0, len(path), 3):  # outermost first, so nearer scopes win
            outer.update({t.name: t for t in graphs[path[:depth]].initializer})
        local = {t.name: t for t in graph.initializer}
        for node in graph.node:
            for i in _weight_slots(node, {**outer, **local}):
                name = node.input[i]
                if name in local or name not in outer:
                    continue
                tensor = onnx.TensorProto()
                tensor.CopyFrom(outer[name])
                tensor.name = fresh(name)
                graph.initializer.append(tensor)
                local[tensor.name] = tensor
                node.input[i] = tensor.name
                copies += 1
    return copies


def _explicit_axis_zero_points(graph: onnx.GraphProto, fresh: Callable[[str], str]) -> int:
    stored = {t.name: t for t in graph.initializer}
    added = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 2:
            continue
        weight, scale = stored.get(node.input[0]), stored.get(node.input[1])
        if weight is None or scale is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        if math.prod(scale.dims) > 1:
            dtype = helper.tensor_dtype_to_np_dtype(weight.data_type)
            zero = numpy_helper.from_array(
                np.zeros(tuple(scale.dims), dtype), fresh(f"{node.input[0]}_zero_point")
            )
            graph.initializer.append(zero)
            node.input.append(zero.name)
            added += 1
    return added


def _one_dequantize_per_consumer(graph: onnx.GraphProto, fresh: Callable[[str], str]) -> int:
    stored = {t.name: t for t in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type != "DequantizeLinear" or not _weight_slots(node, stored):
            continue
        for reader, i in readers.get(node.output[0], [])[1:]:
            twin = onnx.NodeProto()
            twin.CopyFrom(node)
            twin.name = ""
            twin.output[0] = fresh(node.output[0])
            reader.input[i] = twin.output[0]
            nodes.append(twin)
    added = len(nodes) - len(graph.node)
    if added:
        del graph.node[:]
        graph.node.extend(nodes)
    return added


def _one_weight_per_reader(graph: onnx.GraphProto, fresh: Callable[[str], str]) -> int:
    stored = {t.name: t for t in graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        for i in _weight_slots(node, stored):
            name = node.input[i]
            if name in seen and name in stored:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(stored[name])
                tensor.name = fresh(name)
                graph.initializer.append(tensor)
                node.input[i] = tensor.name
                copies += 1
            seen.add(name)
    return copies


def _merge_duplicates(model: onnx.ModelProto) -> None:
    """Identical initializers (same type, shape and bytes) are kept once, in the innermost
    graph enclosing every user; names are unique in every scope by now, so moving a tensor up
    to an outer graph cannot be shadowed. Int8 weights of integer kernels and their zero
    points stay each reader's own, in its own graph (see :func:`exact_int8_loadable`); uint8
    ones (see :func:`subgraph_weights_to_uint8`) are merged like any tensor."""
    graphs = dict(graph_tree(model.graph))
    kept_names = {value.name for graph in graphs.values() for value in graph.input}
    kept_names |= {value.name for value in model.graph.output}
    kept_names |= _integer_weights(model)
    groups: dict[tuple[int, tuple[int, ...], str], list[tuple[GraphPath, int]]] = {}
    for path, graph in graphs.items():
        for i, tensor in enumerate(graph.initializer):
            if tensor.name in kept_names or tensor.data_location == onnx.TensorProto.EXTERNAL:
                continue
            digest = hashlib.sha256(numpy_helper.to_array(tensor).tobytes()).hexdigest()
            key = (tensor.data_type, tuple(tensor.dims), digest)
            groups.setdefault(key, []).append((path, i))
    renamed: dict[str, str] = {}
    drop: dict[GraphPath, set[int]] = {}
    for copies in groups.values():
        if len(copies) < 2:
            continue
        first_path, first = copies[0]
        keep = graphs[first_path].initializer[first]
        for path, i in copies[1:]:
            renamed[graphs[path].initializer[i].name] = keep.name
            drop.setdefault(path, set()).add(i)
        home = _common_ancestor([path for path, _ in copies])
        if home != first_path:
            graphs[home].initializer.append(keep)  # a copy: protobuf appends by value
            drop.setdefault(first_path, set()).add(first)
    for path, graph in graphs.items():
        gone = drop.get(path, set())
        if gone:
            kept = [t for i, t in enumerate(graph.initializer) if i not in gone]
            del graph.initializer[:]
            graph.initializer.extend(kept)
        for node in graph.node:
            node.input[:] = [renamed.get(name, name) for name in node.input]
        for value in graph.output:
            value.name = renamed.get(value.name, value.name)


def _common_ancestor(paths: list[GraphPath]) -> GraphPath:
    """The innermost graph holding all of ``paths`` (three indices per level of nesting)."""
    common = paths[0]
    for path in paths[1:]:
        length = 0
        while length < min(len(common), len(path)) and common[length] == path[length]:
            length += 1
        common = common[: length - length % 3]
    return common


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {
        name
        for graph in all_graphs(model.graph)
        for name in (
            *(i for node in graph.node for i in node.input),
            *(value.name for value in (*graph.output, *graph.input)),
        )
    }
    for graph in all_graphs(model.graph):
        kept = [t for t in graph.initializer if t.name in used]
        if len(kept) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(kept)


# --- dropping what a runtime does not read ----------------------------------------------------


def _drop_default_attributes(model: onnx.ModelProto) -> None:
    """Attributes equal to their schema default at the model's opset (ONNX domain only), and
    ``kernel_shape`` of convolutions whose stored weight has that shape (it is inferred from
    the weight when absent)."""
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    shapes = {t.name: tuple(t.dims) for t in _initializers(model).values()}
    for graph in all_graphs(model.graph):
        producers = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            domain = node.domain or "ai.onnx"
            if domain != "ai.onnx" or not node.attribute:
                continue
            try:
                schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), "")
            except onnx.defs.SchemaError:
                continue
            kernel = _weight_shape(node, producers, shapes)
            kept = [
                a
                for a in node.attribute
                if not _at_default(a, schema)
                and not (node.op_type in _SPATIAL_OPS and _spatial_default(a))
                and not (
                    a.name == "kernel_shape" and kernel is not None and tuple(a.ints) == kernel[2:]
                )
            ]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)


def _at_default(attribute: onnx.AttributeProto, schema: onnx.defs.OpSchema) -> bool:
    declared = schema.attributes.get(attribute.name)
    if declared is None or declared.default_value.type != attribute.type:
        return False  # no default (required, or optional with behaviour of its own when absent)
    if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return False
    value = helper.get_attribute_value(attribute)
    return bool(helper.get_attribute_value(declared.default_value) == value)


def _spatial_default(attribute: onnx.AttributeProto) -> bool:
    default = _SPATIAL_DEFAULTS.get(attribute.name)
    if default is None or attribute.type != onnx.AttributeProto.INTS:
        return False
    return all(v == default for v in attribute.ints)


def _weight_shape(
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    shapes: dict[str, tuple[int, ...]],
) -> tuple[int, ...] | None:
    """The stored shape of a convolution's weight (through a DequantizeLinear), if stored."""
    if node.op_type not in _KERNEL_OPS:
        return None
    name = node.input[3 if node.op_type == "QLinearConv" else 1]
    source = producers.get(name)
    if source is not None and source.op_type == "DequantizeLinear":
        name = source.input[0]
    return shapes.get(name)


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    used = {node.domain or "" for graph in all_graphs(model.graph) for node in graph.node}
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


# --- names -------------------------------------------------------------------------------------


def _short_names(taken: set[str]) -> Iterator[str]:
    """C identifiers, shortest first (52 of one character, 3,339 of two, ...), none in ``taken``."""
    length = 1
    while True:
        for first in _FIRST:
            for rest in _suffixes(length - 1):
                name = first + rest
                if name not in taken:
                    yield name
        length += 1


def _suffixes(length: int) -> Iterator[str]:
    if length == 0:
        yield ""
        return
    for head in _REST:
        for tail in _suffixes(length - 1):
            yield head + tail


class _Scopes:
    """Every name of a model resolved to the value it means: a definition (graph input,
    initializer, node output) of the innermost enclosing graph that has one, so a subgraph
    shadowing an outer name is told apart from one reading it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.uses: Counter[_ValueKey] = Counter()
        self.unresolved: set[str] = set()
        self._walk(model.graph, (), {}, self._count)

    def _count(self, key: _ValueKey | None, name: str) -> str:
        if key is None:
            self.unresolved.add(name)
        else:
            self.uses[key] += 1
        return name

    def rewrite(self, model: onnx.ModelProto, names: dict[_ValueKey, str]) -> None:
        """Every definition and reference renamed to ``names`` of the value it means."""
        self._walk(model.graph, (), {}, lambda key, name: names.get(key, name) if key else name)

    def _walk(
        self,
        graph: onnx.GraphProto,
        path: GraphPath,
        outer: dict[str, _ValueKey],
        visit: Callable[[_ValueKey | None, str], str],
    ) -> None:
        scope = dict(outer)
        defined = [
            *(value.name for value in graph.input),
            *(tensor.name for tensor in graph.initializer),
            *(sparse.values.name for sparse in graph.sparse_initializer),
            *(out for node in graph.node for out in node.output if out),
        ]
        for name in defined:
            scope[name] = (path, name)
        for value in graph.input:
            value.name = visit(scope[value.name], value.name)
        for tensor in graph.initializer:
            tensor.name = visit(scope[tensor.name], tensor.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = visit(scope[sparse.values.name], sparse.values.name)
        for i, node in enumerate(graph.node):
            node.input[:] = [visit(scope.get(n), n) if n else n for n in node.input]
            for j, attribute in enumerate(node.attribute):
                if attribute.type == onnx.AttributeProto.GRAPH:
                    self._walk(attribute.g, (*path, i, j, 0), scope, visit)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for k, sub in enumerate(attribute.graphs):
                        self._walk(sub, (*path, i, j, k), scope, visit)
            node.output[:] = [visit(scope[n], n) if n else n for n in node.output]
        for value in graph.output:
            value.name = visit(scope.get(value.name), value.name)


def _rename(model: onnx.ModelProto) -> None:
    """Internal values renamed to short C identifiers, unique across all graphs, the most used
    shortest; the main graph's inputs and outputs keep theirs."""
    main = model.graph
    scopes = _Scopes(model)
    kept_names = {value.name for value in (*main.input, *main.output)}
    kept = {key for key in scopes.uses if key[0] == () and key[1] in kept_names}
    fresh = _short_names(kept_names | scopes.unresolved)
    names = {key: key[1] if key in kept else next(fresh) for key, _ in scopes.uses.most_common()}
    scopes.rewrite(model, names)


def outer_names(node: onnx.NodeProto) -> set[str]:
    """Names the subgraphs of ``node`` read from enclosing scopes (its implicit inputs)."""
    names: set[str] = set()
    for sub in subgraphs(node):
        defined = {v.name for v in sub.input} | {t.name for t in sub.initializer}
        defined |= {out for inner in sub.node for out in inner.output}
        read = {name for inner in sub.node for name in inner.input if name}
        read |= {value.name for value in sub.output}
        for inner in sub.node:
            read |= outer_names(inner)
        names |= read - defined
    return names
