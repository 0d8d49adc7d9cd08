"""Calibration, training and evaluation data: ``.npz`` files of named input arrays (+ labels)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.controller.errors import DataMismatchError
from edgefleet.shared.manifest import IOSignature

LABELS_KEY = "labels"


@dataclass(frozen=True)
class Dataset:
    """Named input arrays sharing their first (sample) dimension, and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataMismatchError("a data set needs at least one input array")
        counts = {name: arr.shape[0] if arr.ndim else 0 for name, arr in self.inputs.items()}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise DataMismatchError(f"inputs must share a non-empty sample dimension: {counts}")
        if self.labels is not None and self.labels.shape[:1] != (self.size,):
            raise DataMismatchError(
                f"{self.labels.shape[0] if self.labels.ndim else 0} labels for {self.size} samples"
            )

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, index: np.ndarray | slice) -> Dataset:
        return Dataset(
            inputs={k: v[index] for k, v in self.inputs.items()},
            labels=None if self.labels is None else self.labels[index],
        )

    def save(self, path: Path) -> None:
        arrays = dict(self.inputs)
        if self.labels is not None:
            arrays[LABELS_KEY] = self.labels
        np.savez(path, **arrays)  # type: ignore[arg-type]


def load_npz(path: Path, *, labels_key: str = LABELS_KEY) -> Dataset:
    """Read a data set; the array named ``labels_key`` (if any) holds the labels.

    Raises:
        DataMismatchError: the file is missing, not an ``.npz``, or its arrays are inconsistent.
    """
    if not path.is_file():
        raise DataMismatchError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataMismatchError(f"{path} is not a readable .npz file: {e}") from e
    labels = arrays.pop(labels_key, None)
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise DataMismatchError(f"{path}: labels must be integers, got {labels.dtype}")
    return Dataset(inputs=arrays, labels=labels)


def check_against_signature(data: Dataset, signature: IOSignature, *, what: str) -> Dataset:
    """The data with inputs cast to the model's dtypes, after checking names and shapes.

    Raises:
        DataMismatchError: names differ, ranks differ, or a fixed dimension does not match.
    """
    expected = [spec.name for spec in signature.inputs]
    if sorted(expected) != sorted(data.inputs):
        raise DataMismatchError(
            f"{what} data has inputs {sorted(data.inputs)}, the model expects {sorted(expected)}",
            expected=expected,
            got=list(data.inputs),
        )
    cast: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = data.inputs[spec.name]
        if arr.ndim != len(spec.shape):
            raise DataMismatchError(
                f"{what} input {spec.name!r} has shape {list(arr.shape)}, the model expects rank "
                f"{len(spec.shape)} {_shape_text(spec.shape)}",
                expected=expected,
                got=list(data.inputs),
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if axis == 0 or want is None:
                continue  # the sample dimension may differ from the model's batch size
            if want != got:
                raise DataMismatchError(
                    f"{what} input {spec.name!r} has shape {list(arr.shape)}, the model expects "
                    f"{_shape_text(spec.shape)} (dimension {axis}: {got} != {want})",
                    expected=expected,
                    got=list(data.inputs),
                )
        kind_ok = np.issubdtype(arr.dtype, np.floating) == spec.dtype.startswith("float")
        if not kind_ok:
            raise DataMismatchError(
                f"{what} input {spec.name!r} is {arr.dtype}, the model expects {spec.dtype}"
            )
        cast[spec.name] = arr.astype(spec.dtype, copy=False)
    return Dataset(inputs=cast, labels=data.labels)


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
