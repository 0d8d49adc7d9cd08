"""The reference recipe on scikit-learn's bundled digits: a teacher MLP trained here, a student
distilled from it, pruned and quantized to every target this machine can build."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgefleet.controller.compress.built import Notify
from edgefleet.controller.compress.convert import EDGETPU_COMPILER
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.distill import train_classifier
from edgefleet.controller.compress.pipeline import CompressionData, compress_and_register
from edgefleet.controller.compress.recipe import DistillConfig, Recipe
from edgefleet.controller.compress.sources import torch_source
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.registry.records import VersionRecord
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.shared.manifest import ARTIFACT_TARGETS, ArtifactTarget

INPUT_NAME = "pixels"


class DigitsTeacher(nn.Module):
    """A wide MLP on 8x8 digit images flattened to 64 features in [0, 1]."""

    def __init__(self, hidden: int = 1280) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )  # fmt: skip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(pixels)
        return logits


@dataclass(frozen=True)
class DigitsSplits:
    train: Dataset
    evaluation: Dataset


def digits_splits(seed: int = 0, eval_fraction: float = 0.3) -> DigitsSplits:
    """Stratified train / held-out split of the digits bundled with scikit-learn (no download)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(
        x, y, test_size=eval_fraction, random_state=seed, stratify=y
    )
    return DigitsSplits(
        train=Dataset(inputs={INPUT_NAME: x_tr}, labels=y_tr),
        evaluation=Dataset(inputs={INPUT_NAME: x_ev}, labels=y_ev),
    )


def train_teacher(splits: DigitsSplits, *, epochs: int = 20, seed: int = 0) -> DigitsTeacher:
    torch.manual_seed(seed)
    teacher = DigitsTeacher()
    return train_classifier(  # type: ignore[return-value]
        teacher,
        (splits.train.inputs[INPUT_NAME],),
        splits.train.labels,
        epochs=epochs,
        batch_size=64,
        learning_rate=1e-3,
        seed=seed,
    )


def buildable_targets() -> tuple[ArtifactTarget, ...]:
    """Every target, less ``edgetpu`` when its compiler is not installed."""
    have_compiler = shutil.which(EDGETPU_COMPILER) is not None
    return tuple(t for t in ARTIFACT_TARGETS if t != "edgetpu" or have_compiler)  # type: ignore[misc]


def reference_recipe(*, quick: bool = False) -> Recipe:
    return Recipe(
        targets=buildable_targets(),
        distill=DistillConfig(temperature=4.0, alpha=0.7, epochs=25 if quick else 60),
        student_spec="mlp:384",
        prune_sparsity=0.5,
        finetune_epochs=3 if quick else 8,
        finetune_learning_rate=5e-4,
    )


def build_reference_model(
    data_dir: Path | None = None,
    *,
    name: str = "digits",
    version: str = "1",
    quick: bool = False,
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    notify: Notify | None = None,
) -> VersionRecord:
    """Train the digits teacher, distill/prune/quantize a student, register ``name:version``.

    Args:
        data_dir: the controller's data dir (registry and store); defaults to the settings'.
        quick: fewer epochs, for benchmarks and demos in a hurry.
    """
    if settings is None:
        settings = get_settings(data_dir=data_dir) if data_dir else get_settings()
    registry = registry or ModelRegistry.from_settings(settings)
    splits = digits_splits()
    teacher = train_teacher(splits, epochs=10 if quick else 20)
    calibration = splits.train.take(slice(0, 256))
    return compress_and_register(
        registry,
        name,
        version,
        torch_source(teacher, (INPUT_NAME,)),
        reference_recipe(quick=quick),
        CompressionData(evaluation=splits.evaluation, calibration=calibration, train=splits.train),
        settings=settings,
        notify=notify or (lambda _: None),
    )
