"""Knowledge distillation and short supervised training of small classifiers.

KD loss (Hinton et al.): alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y);
without labels the CE term is dropped and the loss is the soft term alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the field's conventional alias
from torch import nn

from edgefleet.controller.compress.recipe import DistillConfig


def as_eval(module: nn.Module) -> nn.Module:
    """``module.eval()`` that also works on torch.export modules, whose ``eval()`` raises: their
    graph was captured in eval mode already; only the flags need setting."""
    for m in module.modules():
        m.training = False
    return module


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss of a batch (mean over the batch)."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
    ) * (temperature * temperature)
    if labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def mlp_student(in_features: int, hidden: tuple[int, ...], classes: int) -> nn.Module:
    """A flatten + MLP classifier with ReLU between layers."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def train_classifier(
    model: nn.Module,
    inputs: tuple[np.ndarray, ...],
    labels: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    teacher: nn.Module | None = None,
    config: DistillConfig | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam: KD from ``teacher`` when given, else cross-entropy.

    Without a teacher the labels are required; with one they are optional (unlabeled transfer set).
    """
    if teacher is None and labels is None:
        raise ValueError("training without a teacher needs labels")
    generator = torch.Generator().manual_seed(seed)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    teacher_logits = None
    if teacher is not None:
        as_eval(teacher)
        with torch.no_grad():
            teacher_logits = teacher(*tensors)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    n = tensors[0].shape[0]
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = model(*(t[idx] for t in tensors))
            batch_y = None if y is None else y[idx]
            if teacher_logits is not None and config is not None:
                loss = kd_loss(
                    logits,
                    teacher_logits[idx],
                    batch_y,
                    temperature=config.temperature,
                    alpha=config.alpha,
                )
            else:
                assert batch_y is not None
                loss = F.cross_entropy(logits, batch_y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return as_eval(model)


def top1_accuracy(model: nn.Module, inputs: tuple[np.ndarray, ...], labels: np.ndarray) -> float:
    with torch.no_grad():
        logits = as_eval(model)(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
    return float((logits.argmax(dim=-1).numpy() == labels).mean())
