"""Checking inference inputs against the signed signature, so bad requests are client errors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefleet.agent.errors import BadInputError
from edgefleet.agent.runtimes import Array
from edgefleet.shared.manifest import IOSignature, TensorSpec


def check_inputs(signature: IOSignature, inputs: Mapping[str, object]) -> dict[str, Array]:
    """Return ``inputs`` as arrays if they match ``signature`` exactly (names, dtype, shape).

    Raises:
        BadInputError: a missing or unknown name, a non-array, the wrong dtype or shape.
    """
    specs = {spec.name: spec for spec in signature.inputs}
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise BadInputError(f"unknown input {unknown[0]!r}; the model takes {sorted(specs)}")
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise BadInputError(f"missing input {missing[0]!r}; the model takes {sorted(specs)}")
    checked: dict[str, Array] = {}
    for name, value in inputs.items():
        spec = specs[name]
        if not isinstance(value, np.ndarray):
            raise BadInputError(f"input {name!r} is a {type(value).__name__}, not a numpy array")
        if value.dtype != np.dtype(spec.dtype):
            raise BadInputError(f"input {name!r} has dtype {value.dtype}, expected {spec.dtype}")
        check_shape(spec, value.shape)
        checked[name] = value
    return checked


class InputChecker:
    """:func:`check_inputs` for one signature, precomputed: the per-request hot path."""

    __slots__ = ("_signature", "_specs")

    def __init__(self, signature: IOSignature) -> None:
        self._signature = signature
        self._specs = {s.name: (np.dtype(s.dtype), s.shape) for s in signature.inputs}

    def __call__(self, inputs: Mapping[str, object]) -> Mapping[str, Array]:
        """Return ``inputs`` unchanged if they match; else raise like :func:`check_inputs`.

        Raises:
            BadInputError: see :func:`check_inputs`.
        """
        specs = self._specs
        if inputs.keys() != specs.keys():
            return check_inputs(self._signature, inputs)  # raises with the precise reason
        for name, value in inputs.items():
            dtype, shape = specs[name]
            if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != len(shape):
                return check_inputs(self._signature, inputs)
            for got, want in zip(value.shape, shape, strict=True):
                if got < 1 or (want is not None and got != want):
                    return check_inputs(self._signature, inputs)
        return inputs  # type: ignore[return-value]


def check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Raise BadInputError unless ``shape`` fits ``spec`` (``None`` dims match any size >= 1).

    Raises:
        BadInputError: wrong rank or a fixed dimension of the wrong size.
    """
    if len(shape) != len(spec.shape) or any(
        (want is not None and got != want) or got < 1
        for got, want in zip(shape, spec.shape, strict=True)
    ):
        wanted = ["?" if d is None else d for d in spec.shape]
        raise BadInputError(f"input {spec.name!r} has shape {list(shape)}, expected {wanted}")


def arrays_from_json(signature: IOSignature, payload: object) -> dict[str, Array]:
    """Convert ``{"inputs": {"name": nested lists}}`` to arrays of the signed dtypes.

    Raises:
        BadInputError: not that structure, ragged lists, or values the dtype cannot hold.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise BadInputError('body must be a JSON object {"inputs": {"<name>": [...]}}')
    specs = {spec.name: spec for spec in signature.inputs}
    arrays: dict[str, Array] = {}
    for name, value in payload["inputs"].items():
        spec = specs.get(name)
        if spec is None:
            raise BadInputError(f"unknown input {name!r}; the model takes {sorted(specs)}")
        try:
            raw = np.asarray(value)
        except ValueError as e:
            raise BadInputError(f"input {name!r} is not a rectangular array: {e}") from e
        wanted = np.dtype(spec.dtype)
        if raw.dtype.kind not in "biuf" and raw.size:
            raise BadInputError(f"input {name!r} holds {raw.dtype} values, expected numbers")
        if wanted.kind in "iub" and raw.dtype.kind == "f":
            raise BadInputError(f"input {name!r} holds floats, expected {spec.dtype}")
        try:
            arrays[name] = raw.astype(wanted, casting="unsafe") if raw.size else raw.astype(wanted)
        except (ValueError, OverflowError) as e:
            raise BadInputError(f"input {name!r} does not fit {spec.dtype}: {e}") from e
        if wanted.kind in "iu" and raw.size and not np.array_equal(arrays[name], raw):
            raise BadInputError(f"input {name!r} has values outside the range of {spec.dtype}")
    return check_inputs(signature, arrays)
