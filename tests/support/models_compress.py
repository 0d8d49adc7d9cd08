"""Small models and data sets the compression tests build in temporary directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.distill import train_classifier


def blobs(n: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs, float32 features and int64 labels."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(0.0, 2.0, size=(classes, features))
    labels = rng.integers(0, classes, size=n)
    x = centers[labels] + rng.normal(0.0, 1.0, size=(n, features))
    return x.astype(np.float32), labels.astype(np.int64)


class WideMlp(nn.Module):
    """A classifier whose size is almost all weights (int8 should make it ~4x smaller)."""

    def __init__(self, features: int = 32, hidden: int = 384, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


def trained_mlp(seed: int = 0) -> tuple[WideMlp, Dataset, Dataset]:
    """A WideMlp trained for a few epochs on blobs, and (train, held-out) data sets."""
    x, y = blobs(1200, 32, 10, seed)
    train = Dataset(inputs={"features": x[:900]}, labels=y[:900])
    held_out = Dataset(inputs={"features": x[900:]}, labels=y[900:])
    torch.manual_seed(seed)
    model = WideMlp()
    train_classifier(
        model, (x[:900],), y[:900], epochs=3, batch_size=64, learning_rate=1e-3, seed=seed
    )
    return model.eval(), train, held_out


class TinyCnn(nn.Module):
    """A small convolutional classifier on 1x16x16 images."""

    def __init__(self, channels: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(2 * channels * 16, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with one bright quadrant; the label is the quadrant."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    images = rng.normal(0.0, 0.3, size=(n, 1, 16, 16)).astype(np.float32)
    for i, q in enumerate(labels):
        r, c = divmod(int(q), 2)
        images[i, 0, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 1.0
    return images, labels.astype(np.int64)


def trained_cnn(seed: int = 0) -> tuple[TinyCnn, Dataset, Dataset]:
    x, y = quadrant_images(400, seed)
    train = Dataset(inputs={"image": x[:300]}, labels=y[:300])
    held_out = Dataset(inputs={"image": x[300:]}, labels=y[300:])
    torch.manual_seed(seed)
    model = TinyCnn()
    train_classifier(
        model, (x[:300],), y[:300], epochs=2, batch_size=32, learning_rate=3e-3, seed=seed
    )
    return model.eval(), train, held_out


class TwoInputModel(nn.Module):
    """Float features plus int64 token ids (embedding lookup): a regression with 3 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.dense = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(token_ids).mean(dim=1)
        return self.dense(torch.cat([features, pooled], dim=1))


def two_input_data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        inputs={
            "features": rng.normal(size=(n, 16)).astype(np.float32),
            "token_ids": rng.integers(0, 50, size=(n, 4)).astype(np.int64),
        }
    )


def two_input_onnx(path: Path, seed: int = 0) -> Path:
    """An ONNX file with a float and an int64 input, both with a dynamic batch dimension."""
    torch.manual_seed(seed)
    model = TwoInputModel().eval()
    sample = two_input_data(2, seed)
    torch.onnx.export(
        model,
        (torch.from_numpy(sample.inputs["features"]), torch.from_numpy(sample.inputs["token_ids"])),
        str(path),
        input_names=["features", "token_ids"],
        output_names=["scores"],
        dynamic_axes={"features": {0: "batch"}, "token_ids": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path
