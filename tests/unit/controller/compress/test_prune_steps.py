"""Unstructured pruning reaches its sparsity; structured pruning really removes channels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
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
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
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
