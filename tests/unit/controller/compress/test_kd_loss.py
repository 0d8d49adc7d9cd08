"""The distillation loss is the KD loss: checked against a hand computation in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefleet.controller.compress.distill import kd_loss


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _hand_kd(
    s: np.ndarray, t: np.ndarray, y: np.ndarray | None, temp: float, alpha: float
) -> float:
    p_t = _softmax(t / temp)
    p_s = _softmax(s / temp)
    kl = float(np.sum(p_t * (np.log(p_t) - np.log(p_s))) / s.shape[0])
    soft = kl * temp * temp
    if y is None:
        return soft
    ce = float(-np.mean(np.log(_softmax(s)[np.arange(len(y)), y])))
    return alpha * soft + (1 - alpha) * ce


@pytest.mark.parametrize(("temp", "alpha"), [(1.0, 0.5), (4.0, 0.7), (2.5, 1.0), (3.0, 0.0)])
def test_kd_loss_matches_hand_computation(temp: float, alpha: float) -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(size=(5, 6))
    t = rng.normal(size=(5, 6)) * 3
    y = rng.integers(0, 6, size=5)
    got = kd_loss(
        torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), temperature=temp, alpha=alpha
    )
    assert got.item() == pytest.approx(_hand_kd(s, t, y, temp, alpha), rel=1e-9, abs=1e-12)


def test_unlabeled_kd_loss_is_the_soft_term_only() -> None:
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 3))
    t = rng.normal(size=(4, 3))
    got = kd_loss(torch.from_numpy(s), torch.from_numpy(t), None, temperature=2.0, alpha=0.3)
    assert got.item() == pytest.approx(_hand_kd(s, t, None, 2.0, 0.3), rel=1e-9)


def test_kd_loss_is_zero_when_student_equals_teacher_and_alpha_is_one() -> None:
    z = torch.randn(8, 10, dtype=torch.float64)
    assert kd_loss(z, z.clone(), None, temperature=3.0, alpha=1.0).item() == pytest.approx(
        0.0, abs=1e-12
    )
