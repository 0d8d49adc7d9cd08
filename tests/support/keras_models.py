"""Keras models the compression tests build and train themselves (TensorFlow, the controller's
``tensorflow`` extra), on synthetic images they generate with labels."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.controller.compress.data import Dataset

SIDE = 16
CLASSES = 4


def stroke_images(n: int, seed: int, noise: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """NHWC [n, 16, 16, 1] float32 images and their int64 labels: a vertical bar, a horizontal
    bar, a diagonal or a dark square at a random place, in Gaussian noise strong enough that a
    small CNN gets most of them right, not all."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    images = rng.normal(0.0, noise, (n, SIDE, SIDE, 1)).astype(np.float32)
    for i, label in enumerate(labels):
        r, c = (int(v) for v in rng.integers(2, 6, 2))
        if label == 0:
            images[i, r : r + 9, c + 3 : c + 6, 0] += 1.0
        elif label == 1:
            images[i, r + 3 : r + 6, c : c + 9, 0] += 1.0
        elif label == 2:
            images[i, r : r + 8, c : c + 8, 0] += 1.2 * np.eye(8, dtype=np.float32)
        else:
            images[i, r + 1 : r + 8, c + 1 : c + 8, 0] -= 0.8
    return images, labels.astype(np.int64)


@dataclass(frozen=True)
class TrainedKeras:
    """A trained ``keras.Model`` with its held-out (labelled) and calibration data."""

    model: Any
    evaluation: Dataset
    calibration: Dataset
    accuracy: float  # on the evaluation data, by Keras


def tensorflow_module() -> Any:
    """TensorFlow, its start-up logging silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow

    return tensorflow


def keras_module() -> Any:
    """Keras on TensorFlow."""
    tensorflow_module()
    import keras

    return keras


def trained_stroke_cnn(seed: int = 0, epochs: int = 4) -> TrainedKeras:
    """A small NHWC CNN (two convolutions, two dense layers, ~21k weights: every heavy layer
    above the 1024 weights TFLiteConverter quantizes) trained for a few epochs."""
    keras = keras_module()
    keras.utils.set_random_seed(seed)
    x_train, y_train = stroke_images(800, seed + 1)
    x_eval, y_eval = stroke_images(300, seed + 2)
    x_calib, _ = stroke_images(64, seed + 3)
    image = keras.Input((SIDE, SIDE, 1), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(image)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    model = keras.Model(image, keras.layers.Dense(CLASSES)(x))
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_eval, y_eval, verbose=0)
    return TrainedKeras(
        model=model,
        evaluation=Dataset(inputs={"image": x_eval}, labels=y_eval),
        calibration=Dataset(inputs={"image": x_calib}),
        accuracy=float(accuracy),
    )


def export_saved_model(model: Any, path: Path) -> Path:
    """``model.export(path)``, as a user would write a SavedModel (its prints swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(path), format="tf_saved_model", verbose=False)
    return path
