"""A Keras model (``.keras``, legacy ``.h5``) or a TensorFlow SavedModel directory as the model
to compress (the ``tensorflow`` extra), seen through one serving signature.

Every artifact is converted from that signature, so all present the same inputs and outputs:
a SavedModel's ``serving_default`` as it is, or the one Keras' own ``model.export`` writes (inputs
named as the model's ``Input`` layers, outputs ``output_0``... or a dict output's keys). Its
tensors are ordered by name, as TensorFlow flattens a signature's outputs and LiteRT orders a
signature's tensors: one order for every runtime.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.controller.compress.sources import (
    KERAS_FORMATS,
    KerasKind,
    KerasSource,
    dtype_name,
)
from edgefleet.controller.compress.tensorflow_extra import captured_output, import_tensorflow
from edgefleet.controller.errors import ConversionError, DataMismatchError, ModelLoadError
from edgefleet.shared.manifest import IOSignature, TensorSpec

SERVING = "serving_default"
KERAS_SUFFIXES: dict[str, KerasKind] = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}


@dataclass(frozen=True)
class ServingModel:
    """A SavedModel on disk and its serving function, what every artifact is converted from."""

    saved_model: Path
    loaded: Any  # what tf.saved_model.load returned: it owns the variables
    function: Any  # its serving ConcreteFunction
    signature: IOSignature
    params: int
    sparsity: float
    weight_bytes: int  # every variable, as stored: the float model's size, what int8 shrinks


def is_keras_path(path: Path) -> bool:
    """A directory (a SavedModel, or not a model at all) or a Keras file by its suffix."""
    return path.is_dir() or path.suffix.lower() in KERAS_SUFFIXES


def keras_source(path: Path) -> KerasSource:
    """Load a ``.keras`` / ``.h5`` file or a SavedModel directory.

    Raises:
        MissingExtraError: TensorFlow is not installed (naming the extra).
        ModelLoadError: missing, not a SavedModel directory, a file Keras cannot load, or a
            SavedModel without a ``serving_default`` signature.
    """
    kind: KerasKind
    if path.is_dir():
        if not any((path / n).is_file() for n in ("saved_model.pb", "saved_model.pbtxt")):
            raise ModelLoadError(
                str(path), "a directory, but not a TensorFlow SavedModel (no saved_model.pb)"
            )
        kind = "saved_model"
    elif not path.is_file():
        raise ModelLoadError(str(path), "file does not exist")
    else:
        kind = KERAS_SUFFIXES[path.suffix.lower()]
    if kind == "keras" and not zipfile.is_zipfile(path):
        raise ModelLoadError(str(path), "not a Keras .keras archive (a .keras file is a zip)")
    what = "a TensorFlow SavedModel" if kind == "saved_model" else f"a {KERAS_FORMATS[kind]} model"
    tf = import_tensorflow(f"reading {what} ({path.name!r})")
    if kind == "saved_model":
        return KerasSource(path, kind, _load_saved_model(tf, path))
    import keras  # type: ignore[import-untyped]

    try:
        with captured_output(None):
            model = keras.models.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises many unrelated types for a bad file
        raise ModelLoadError(str(path), f"Keras cannot load it: {_first_line(e)}") from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(str(path), f"holds a {type(model).__name__}, not a keras.Model")
    return KerasSource(path, kind, model)


def _load_saved_model(tf: Any, path: Path) -> Any:
    try:
        with captured_output(None):
            loaded = tf.saved_model.load(str(path))
    except Exception as e:  # TensorFlow raises many unrelated types for a bad directory
        raise ModelLoadError(str(path), f"TensorFlow cannot load it: {_first_line(e)}") from e
    if SERVING not in loaded.signatures:
        held = sorted(k for k in loaded.signatures if not k.startswith("_"))
        raise ModelLoadError(
            str(path),
            f"the SavedModel has no {SERVING!r} signature (it has {held or 'none'}) to convert; "
            "write one with Keras' model.export(DIR) or tf.saved_model.save(obj, DIR, "
            "signatures={'serving_default': fn})",
        )
    return loaded


def serving_model(source: KerasSource, work: Path) -> ServingModel:
    """The SavedModel every artifact is converted from: the source directory itself, or the
    Keras model exported into ``work/saved_model`` as ``model.export`` writes it.

    Raises:
        ModelLoadError: the Keras model cannot be exported, or its signature has an input of
            unknown rank or an unsupported dtype.
    """
    tf = import_tensorflow(f"reading a {source.format} model")
    if source.kind == "saved_model":
        directory, loaded = source.path, source.model
    else:
        directory = work / "saved_model"
        try:
            with captured_output(work / "keras-export.log"):
                source.model.export(str(directory), format="tf_saved_model", verbose=False)
        except Exception as e:  # Keras raises many unrelated types for an unexportable model
            raise ModelLoadError(
                str(source.path), f"Keras cannot export it as a SavedModel: {_first_line(e)}"
            ) from e
        loaded = _load_saved_model(tf, directory)
    function = loaded.signatures[SERVING]
    weights = [np.asarray(v.numpy()) for v in function.variables]
    floats = [w for w in weights if np.issubdtype(w.dtype, np.floating)]
    params = int(sum(w.size for w in floats))
    zeros = int(sum(int((w == 0).sum()) for w in floats))
    return ServingModel(
        saved_model=directory,
        loaded=loaded,
        function=function,
        signature=_signature(source.path, function),
        params=params,
        sparsity=zeros / params if params else 0.0,
        weight_bytes=int(sum(w.nbytes for w in weights)),
    )


def _signature(path: Path, function: Any) -> IOSignature:
    _, named = function.structured_input_signature
    outputs = function.structured_outputs

    def spec(name: str, tensor: Any) -> TensorSpec:
        if tensor.shape.rank is None:
            raise ModelLoadError(str(path), f"signature tensor {name!r} has no known rank")
        try:
            dtype = dtype_name(tensor.dtype.as_numpy_dtype)
        except (DataMismatchError, TypeError) as e:
            raise ModelLoadError(str(path), f"signature tensor {name!r}: {e}") from e
        dims = tuple(None if d is None else int(d) for d in tensor.shape.as_list())
        return TensorSpec(name=name, dtype=dtype, shape=dims)

    return IOSignature(
        inputs=tuple(spec(n, named[n]) for n in sorted(named)),
        outputs=tuple(spec(n, outputs[n]) for n in sorted(outputs)),
    )


def source_identity(path: Path) -> tuple[str, int]:
    """sha256 and size in bytes of a model file, or of a SavedModel directory (over its files'
    relative paths and contents, in path order)."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest(), path.stat().st_size
    size = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
        size += file.stat().st_size
    return digest.hexdigest(), size


class KerasRunner:
    """The source model itself, run through its serving function by TensorFlow: the reference
    every artifact is compared with."""

    def __init__(self, serving: ServingModel) -> None:
        tf = import_tensorflow("running a Keras model")
        self._tf = tf
        self._function = serving.function
        self._name = serving.saved_model.name
        self.runtime = f"TensorFlow {tf.__version__} CPU (the source model)"
        self.signature = serving.signature
        self._dtypes = {s.name: s.dtype for s in serving.signature.inputs}

    def to_native(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: inputs[k].astype(self._dtypes[k], copy=False) for k in self._dtypes}

    def run_native(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._function(**{k: self._tf.constant(v) for k, v in inputs.items()})
        except Exception as e:  # TensorFlow raises many unrelated types
            raise ConversionError(self._name, f"TensorFlow cannot run it: {e}") from e
        return {s.name: np.asarray(result[s.name]) for s in self.signature.outputs}

    def to_float(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
