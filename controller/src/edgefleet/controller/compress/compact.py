"""Compacting a built ONNX artifact: what a runtime does not read (shape annotations, doc strings,
node names) is dropped and internal tensor names shortened. A quantizer's long derived names
(``conv11_se_1_weights_quantized_scale``, one per tensor and node) are a third of a small int8
model; the graph's inputs and outputs keep their names, so its signature is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from all_graphs(sub)


def compact_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without value_info, doc strings and node names, its internal tensors renamed
    ``t0``, ``t1``, ... (one map over all graphs, so names a subgraph takes from its outer scope
    stay consistent); in place, and returned."""
    main = model.graph
    kept = {v.name for v in (*main.input, *main.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in kept:  # "" marks an omitted optional input
            return name
        if name not in names:
            names[name] = f"t{len(names):x}"
            while names[name] in kept:  # never collide with a kept name
                names[name] = f"t_{names[name]}"
        return names[name]

    model.doc_string = ""
    for graph in all_graphs(main):
        graph.doc_string = ""
        del graph.value_info[:]
        for tensor in graph.initializer:
            tensor.name = short(tensor.name)
            tensor.doc_string = ""
        for sparse in graph.sparse_initializer:
            sparse.values.name = short(sparse.values.name)
        for value in (*graph.input, *graph.output):
            value.name = short(value.name)
            value.doc_string = ""
        for node in graph.node:
            node.name = ""
            node.doc_string = ""
            node.input[:] = [short(n) for n in node.input]
            node.output[:] = [short(n) for n in node.output]
    return model


def compact_file(path: Path) -> int:
    """Compact the ONNX file at ``path`` in place; the bytes saved."""
    before = path.stat().st_size
    model = compact_model(onnx.load(str(path)))
    onnx.save(model, str(path))
    return before - path.stat().st_size
