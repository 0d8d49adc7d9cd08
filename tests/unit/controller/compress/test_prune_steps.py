"""Unstructured pruning reaches its sparsity; structured pruning really removes channels."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from edgefleet.controller.compress.prune import (
    onnx_weight_stats,
    param_count,
    prune_structured,
    prune_unstructured_onnx,
    prune_unstructured_torch,
    weight_sparsity,
)
from edgefleet.controller.errors import CompressionError
from support.models_compress import TinyCnn, WideMlp, two_input_onnx
from support.onnx_session import cpu_session
from support.pretrained import pretrained_model


def test_unstructured_torch_pruning_reaches_target_and_is_permanent() -> None:
    torch.manual_seed(0)
    model = WideMlp()
    prune_unstructured_torch(model, 0.6)
    assert weight_sparsity(model) == pytest.approx(0.6, abs=0.01)
    # masks removed: plain parameters, no forward pre-hooks left behind
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in WideMlp().named_parameters()}


def test_unstructured_pruning_without_prunable_layers_is_an_error() -> None:
    with pytest.raises(CompressionError, match="no Linear or Conv"):
        prune_unstructured_torch(nn.Sequential(nn.ReLU()), 0.5)


def test_onnx_initializer_pruning_zeroes_weights_not_biases(tmp_path) -> None:
    model = onnx.load(str(two_input_onnx(tmp_path / "two.onnx")))
    pruned = prune_unstructured_onnx(model, 0.5)
    _, sparsity = onnx_weight_stats(pruned)
    assert sparsity == pytest.approx(0.5, abs=0.02)
    for init in pruned.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.ndim == 1 and arr.dtype == np.float32:
            assert np.count_nonzero(arr) == arr.size or arr.size == 0, init.name
    # the original proto is untouched and the pruned graph still runs
    assert onnx_weight_stats(model)[1] < 0.01
    session = cpu_session(pruned.SerializeToString())
    out = session.run(
        None, {"features": np.ones((3, 16), np.float32), "token_ids": np.zeros((3, 4), np.int64)}
    )
    assert out[0].shape == (3, 3)


def test_structured_pruning_removes_neurons_of_an_mlp() -> None:
    torch.manual_seed(0)
    model = WideMlp().eval()
    example = (torch.randn(1, 32),)
    before = param_count(model)
    result = prune_structured(model, example, 0.5)
    assert result.params_before == before
    assert result.params_after == param_count(model)
    assert result.params_after < 0.35 * before  # hidden x hidden shrinks ~4x
    assert result.macs_after < 0.35 * result.macs_before
    assert model.body[0].out_features == 192
    assert model(torch.randn(4, 32)).shape == (4, 10)  # output width kept


def test_structured_pruning_removes_conv_channels() -> None:
    torch.manual_seed(0)
    model = TinyCnn().eval()
    example = (torch.randn(1, 1, 16, 16),)
    result = prune_structured(model, example, 0.5)
    assert model.features[0].out_channels == 8
    assert model.features[3].out_channels == 16
    assert result.params_after < 0.5 * result.params_before
    assert result.macs_after < 0.5 * result.macs_before
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_finetune_during_unstructured_pruning_keeps_pruned_weights_at_zero() -> None:
    torch.manual_seed(0)
    model = WideMlp()
    x = torch.randn(64, 32)
    y = torch.randint(0, 10, (64,))

    def finetune() -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    before = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]
    prune_unstructured_torch(model, 0.6, finetune)
    after = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    assert weight_sparsity(model) == pytest.approx(0.6, abs=0.01)
    assert any(not torch.equal(a[a != 0], b[a != 0]) for a, b in zip(after, before, strict=True))


def _weights_in_branches_and_constants() -> onnx.ModelProto:
    """MatMul weights stored three ways: a top-level Constant node, an initializer of an If
    branch and a Constant node of the other branch (value_floats too), as Silero VAD and
    PaddleOCR exports store theirs."""
    rng = np.random.default_rng(0)
    top = rng.normal(size=(4, 6)).astype(np.float32)
    then_w = rng.normal(size=(6, 3)).astype(np.float32)
    then_w[0] = 0.0  # 3 of the 18 values
    else_w = rng.normal(size=(6, 3)).astype(np.float32)

    def branch(name: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> Any:
        out = helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, [2, 3])
        return helper.make_graph(nodes, name, [], [out], inits)

    then_graph = branch(
        "then",
        [helper.make_node("MatMul", ["h", "then_w"], ["then_y"])],
        [numpy_helper.from_array(then_w, "then_w")],
    )
    else_graph = branch(
        "else",
        [
            helper.make_node("Constant", [], ["else_w"], value=numpy_helper.from_array(else_w)),
            helper.make_node("Constant", [], ["bias"], value_floats=[0.5, 0.25, 0.0]),
            helper.make_node("MatMul", ["h", "else_w"], ["m"]),
            helper.make_node("Add", ["m", "bias"], ["else_y"]),
        ],
        [],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["top_w"], value=numpy_helper.from_array(top)),
            helper.make_node("MatMul", ["x", "top_w"], ["h"]),
            helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph),
        ],
        "branches",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_onnx_weight_stats_counts_constants_and_subgraphs() -> None:
    model = _weights_in_branches_and_constants()
    params, sparsity = onnx_weight_stats(model)
    assert params == 4 * 6 + 6 * 3 + 6 * 3 + 3  # top Constant, then initializer, else Constants
    assert sparsity == pytest.approx(3 / (24 + 18 + 18))
    session = cpu_session(model.SerializeToString())
    x = np.ones((2, 4), np.float32)
    assert session.run(None, {"x": x, "flag": np.array(True)})[0].shape == (2, 3)


@pytest.mark.parametrize(("name", "at_least"), [("ppocr-cls", 120_000), ("silero-vad", 500_000)])
def test_onnx_weight_stats_of_real_models_are_not_zero(name: str, at_least: int) -> None:
    """Both used to report 0 parameters: ppocr-cls keeps its weights in Constant nodes, Silero
    VAD inside If branches."""
    model = onnx.load(str(pretrained_model(name)))
    top_level = sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    )
    params, _ = onnx_weight_stats(model)
    assert top_level < at_least <= params
