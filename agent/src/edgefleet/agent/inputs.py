"""Checking inference inputs against the signed signature, so bad requests are client errors."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edgefleet.agent.errors import BadInputError
from edgefleet.agent.runtimes import Array
from edgefleet.shared.manifest import DTYPE_ITEMSIZE, IOSignature, TensorSpec

# The {"inputs": {...}} envelope around the arrays, in JSON values (see json_value_budget).
_ENVELOPE_VALUES = 8


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

    __slots__ = ("_checks", "_names", "_signature")

    def __init__(self, signature: IOSignature) -> None:
        self._signature = signature
        self._names = {s.name: None for s in signature.inputs}.keys()
        # per input: name, dtype, the whole shape when no dimension is dynamic, the spec shape
        self._checks = tuple(
            (
                s.name,
                np.dtype(s.dtype),
                tuple(s.shape) if None not in s.shape and 0 not in s.shape else None,
                s.shape,
            )
            for s in signature.inputs
        )

    def __call__(self, inputs: Mapping[str, object]) -> Mapping[str, Array]:
        """Return ``inputs`` unchanged if they match; else raise like :func:`check_inputs`.

        Raises:
            BadInputError: see :func:`check_inputs`.
        """
        if inputs.keys() != self._names:
            return check_inputs(self._signature, inputs)  # raises with the precise reason
        for name, dtype, fixed, shape in self._checks:
            value = inputs[name]
            # ``is`` first: numpy hands out one dtype object per native type, and ``!=`` on
            # dtypes costs more than the rest of this loop
            if type(value) is not np.ndarray or (value.dtype is not dtype and value.dtype != dtype):
                return check_inputs(self._signature, inputs)
            if fixed is not None:
                if value.shape != fixed:
                    return check_inputs(self._signature, inputs)
            elif value.ndim != len(shape):
                return check_inputs(self._signature, inputs)
            else:
                for got, want in zip(value.shape, shape):  # noqa: B905 - ranks are equal
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
        leaf = _first_non_number(value)
        if leaf is not None:  # before numpy sees it: a long string would cost 4 bytes a char
            raise BadInputError(
                f"input {name!r} holds {type(leaf).__name__} values, expected numbers"
            )
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


_NUMBER_TYPES = frozenset({int, float, bool})


def _first_non_number(value: object) -> object | None:
    """The first leaf of the nested lists ``value`` that is not a JSON number or boolean."""
    if type(value) is not list:
        return None if type(value) in _NUMBER_TYPES else value
    stack: list[list[object]] = [value]
    while stack:
        items = stack.pop()
        kinds = set(map(type, items))  # one pass in C per list: cheap next to parsing
        if list in kinds:
            stack.extend(item for item in items if type(item) is list)
            kinds.discard(list)
        if not kinds <= _NUMBER_TYPES:
            leaf: object = next(item for item in items if type(item) in kinds - _NUMBER_TYPES)
            return leaf
    return None


def json_value_budget(signature: IOSignature, *, max_input_bytes: int, max_json_values: int) -> int:
    """The most JSON values a request for ``signature`` can need, capped at ``max_json_values``.

    Values are counted as :func:`edgefleet.agent.api_body.json_value_count` counts them
    (commas, colons and opening brackets). An input of fixed shape needs its elements, its
    nested lists and their separators; a dynamic one at most what ``max_input_bytes`` holds. So
    a model taking ``[1, 4]`` refuses a 16 MiB JSON array unread, whatever the global cap.
    """
    total = _ENVELOPE_VALUES
    for spec in signature.inputs:
        if all(dim is not None for dim in spec.shape):
            dims = [int(dim) for dim in spec.shape if dim is not None]
            elements = math.prod(dims)
            lists = sum(math.prod(dims[:i]) for i in range(len(dims)))
        else:
            elements = max_input_bytes // DTYPE_ITEMSIZE[spec.dtype]
            lists = 1 + elements * (len(spec.shape) - 1)  # each list holds an element or more
        # each element and list is a value and at most one comma; name, colon and comma: 3
        total += 2 * (elements + lists) + 3
        if total >= max_json_values:
            return max_json_values
    return total
