"""Pruning: unstructured magnitude pruning (torch weights, ONNX initializers) and structured
channel/neuron removal with torch-pruning, plus the size measures that show what they did."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch_pruning as tp
from onnx import helper, numpy_helper
from torch import nn
from torch.nn.utils import prune

from edgefleet.controller.compress.compact import all_graphs
from edgefleet.controller.errors import CompressionError

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass(frozen=True)
class StructuredPruneResult:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_sparsity(module: nn.Module) -> float:
    """Fraction of exactly-zero values over the weights of Linear and Conv layers."""
    weights = [m.weight.detach() for m in module.modules() if isinstance(m, _PRUNABLE)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def prune_unstructured_torch(
    module: nn.Module, sparsity: float, finetune: Callable[[], None] | None = None
) -> None:
    """Global L1 magnitude pruning of Linear/Conv weights, made permanent (masks removed).

    ``finetune`` runs while the masks are in place, so training cannot revive pruned weights.
    """
    targets = [(m, "weight") for m in module.modules() if isinstance(m, _PRUNABLE)]
    if not targets:
        raise CompressionError("unstructured pruning found no Linear or Conv layer to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    if finetune is not None:
        finetune()
    for m, name in targets:
        prune.remove(m, name)  # type: ignore[no-untyped-call]


def _onnx_weight_matrices(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Float initializers of rank >= 2 that feed MatMul/Gemm/Conv as inputs (never biases,
    shapes, embedding tables or integer constants)."""
    weight_inputs = {
        name
        for node in model.graph.node
        if node.op_type in {"MatMul", "Gemm", "Conv", "ConvTranspose"}
        for name in node.input[:2]
    }
    return [
        init
        for init in model.graph.initializer
        if init.name in weight_inputs
        and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and len(init.dims) >= 2
    ]


def prune_unstructured_onnx(model: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    """A copy of ``model`` whose smallest-magnitude weight values are zero.

    The threshold is global over all weight matrices, like torch's global magnitude pruning.
    """
    chosen = _onnx_weight_matrices(model)
    if not chosen:
        raise CompressionError("unstructured pruning found no float weight matrix in the graph")
    arrays = {init.name: numpy_helper.to_array(init) for init in chosen}
    magnitudes = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
    k = round(sparsity * magnitudes.size)
    if k == 0:
        return model
    threshold = np.partition(magnitudes, k - 1)[k - 1]
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for init in pruned.graph.initializer:
        if init.name in arrays:
            arr = arrays[init.name]
            zeroed = np.where(np.abs(arr) <= threshold, np.zeros_like(arr), arr)
            init.CopyFrom(numpy_helper.from_array(zeroed, init.name))
    return pruned


def prune_unstructured_parameters(module: nn.Module, sparsity: float) -> None:
    """Global magnitude pruning on a module whose layers are not visible as ``nn.Linear`` /
    ``nn.Conv`` (TorchScript, torch.export): zeroes the smallest values of every parameter of
    rank >= 2, in place, with one threshold over all of them."""
    weights = [p for p in module.parameters() if p.dim() >= 2]
    if not weights:
        raise CompressionError("unstructured pruning found no weight matrix to prune")
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    k = round(sparsity * magnitudes.numel())
    if k == 0:
        return
    threshold = torch.kthvalue(magnitudes, k).values
    with torch.no_grad():
        for w in weights:
            w.masked_fill_(w.abs() <= threshold, 0.0)


def parameter_sparsity(module: nn.Module) -> float:
    """Fraction of exactly-zero values over all parameters of rank >= 2."""
    weights = [p.detach() for p in module.parameters() if p.dim() >= 2]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def onnx_weight_stats(model: onnx.ModelProto) -> tuple[int, float]:
    """Parameter count (float elements of every initializer and Constant node, If/Loop/Scan
    subgraphs included: Silero VAD and exported ``torch.jit`` graphs keep theirs there) and the
    sparsity of the weight matrices (float tensors of rank >= 2 feeding MatMul, Gemm or Conv in
    any graph)."""
    tensors = list(_stored_tensors(model))
    params = sum(int(np.prod(t.dims)) for t in tensors if t.data_type in _FLOAT_TYPES)
    weight_inputs = {
        name
        for graph in all_graphs(model.graph)
        for node in graph.node
        if node.op_type in _WEIGHT_OPS
        for name in node.input[:2]
    }
    matrices = [
        numpy_helper.to_array(t)
        for t in tensors
        if t.name in weight_inputs and t.data_type in _FLOAT_TYPES and len(t.dims) >= 2
    ]
    total = sum(a.size for a in matrices)
    zeros = sum(int((a == 0).sum()) for a in matrices)
    return params, (zeros / total if total else 0.0)


def _stored_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant node tensors of every graph, each named as the graph reads it
    (a Constant's ``value_float(s)`` as a float32 tensor)."""
    for graph in all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            for attribute in node.attribute:
                if attribute.name == "value":
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(attribute.t)
                elif attribute.name in ("value_float", "value_floats"):
                    value = helper.get_attribute_value(attribute)
                    tensor = numpy_helper.from_array(np.asarray(value, np.float32))
                else:
                    continue
                tensor.name = node.output[0]
                yield tensor


def prune_structured(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], ratio: float
) -> StructuredPruneResult:
    """Remove a ``ratio`` of the channels/neurons of every prunable layer (L2 importance).

    The final layer's outputs (the model's output width) are kept. The module shrinks in place.

    Raises:
        CompressionError: torch-pruning cannot trace or prune this module.
    """
    macs_before, params_before = tp.utils.count_ops_and_params(module, example_inputs)
    last = [m for m in module.modules() if isinstance(m, _PRUNABLE)][-1:]
    try:
        pruner = tp.pruner.MetaPruner(
            module,
            example_inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=last,
        )
        pruner.step()
    except (RuntimeError, ValueError, KeyError, AttributeError) as e:
        raise CompressionError(f"structured pruning failed: {e}") from e
    macs_after, params_after = tp.utils.count_ops_and_params(module, example_inputs)
    return StructuredPruneResult(
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=int(macs_before),
        macs_after=int(macs_after),
    )
