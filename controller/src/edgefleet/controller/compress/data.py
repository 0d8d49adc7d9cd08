"""Calibration, training and evaluation data: ``.npz`` files of named input arrays, optional
integer ``labels``, and an optional JSON ``layout`` entry saying how each input holds its samples
(on which batch axis, or whole for every call) and whether a sample is a sequence of calls whose
state an output feeds back. Sequences are turned into single calls by running a model over them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from edgefleet.controller.errors import DataMismatchError
from edgefleet.shared.manifest import IOSignature

LABELS_KEY = "labels"
LAYOUT_KEY = "layout"
LAYOUT_VERSION = 1
NUMBER_KINDS = "biuf"  # bool, signed and unsigned integers, floats
MAX_RANK = 16  # what a TensorSpec holds
MAX_STEPS = 1 << 16
Feed = dict[str, np.ndarray]
Call = Callable[[Feed], dict[str, np.ndarray]]  # one model call: named inputs -> named outputs


class DataLayoutError(DataMismatchError):
    """Data that does not follow its layout, or a layout that cannot be followed: ``subject``
    names the input, output, labels or layout key, ``reason`` says what is wrong."""

    def __init__(self, subject: str, reason: str, *, where: str = "") -> None:
        super().__init__(f"{where}: {subject} {reason}" if where else f"{subject} {reason}")
        self.subject = subject
        self.reason = reason
        self.where = where

    def at(self, where: str) -> DataLayoutError:
        """The same error, saying which file it is about."""
        return type(self)(self.subject, self.reason, where=where)


class LayoutSyntaxError(DataLayoutError):
    """The ``layout`` entry is not what the format allows (``subject`` names the key)."""


class SampleLayoutError(DataLayoutError):
    """An input, an output or the labels do not hold samples the way the layout says."""


class FeedbackError(DataLayoutError):
    """An output fed back between the calls of a sequence is missing or does not fit its input."""


@dataclass(frozen=True)
class InputLayout:
    """How one input holds samples: along ``batch_axis``; or ``whole``, the same value for every
    sample (with a ``batch_axis`` of size 1 it is repeated to each call's batch size)."""

    batch_axis: int | None = 0
    whole: bool = False

    def __post_init__(self) -> None:
        if self.batch_axis is None and not self.whole:
            raise LayoutSyntaxError("input layout", "without a batch_axis must be whole")
        if self.batch_axis is not None and not 0 <= self.batch_axis < MAX_RANK:
            raise LayoutSyntaxError("input layout", f"batch_axis {self.batch_axis} is no axis")


@dataclass(frozen=True)
class SequenceLayout:
    """Each sample is ``steps`` consecutive calls; ``feedback`` maps an input to the output of
    the previous call it takes (its value in the file is the one for the first call)."""

    steps: int
    feedback: Mapping[str, str]


@dataclass(frozen=True)
class Layout:
    """Per-input sample layout, output batch axes (default 0, or their fed input's) and an
    optional sequence. The default layout is plain batch-first arrays."""

    inputs: Mapping[str, InputLayout] = field(default_factory=dict)
    outputs: Mapping[str, int] = field(default_factory=dict)
    sequence: SequenceLayout | None = None

    def input(self, name: str) -> InputLayout:
        return self.inputs.get(name, InputLayout())

    def output_axis(self, name: str) -> int:
        if name in self.outputs:
            return self.outputs[name]
        if self.sequence is not None:
            for fed, output in self.sequence.feedback.items():
                axis = self.input(fed).batch_axis
                if output == name and axis is not None:
                    return axis
        return 0

    def stepped(self, name: str) -> bool:
        """An input with one value per call of a sequence (on the axis after its batch axis)."""
        fed = self.sequence is not None and name in self.sequence.feedback
        return self.sequence is not None and not fed and not self.input(name).whole

    def batch_first(self) -> bool:
        """Every input and output holds samples on axis 0, none whole."""
        return all(i == InputLayout() for i in self.inputs.values()) and all(
            self.output_axis(name) == 0 for name in self.outputs
        )

    def as_json(self) -> dict[str, Any]:
        def entry(spec: InputLayout) -> dict[str, Any]:
            axis = {} if spec.batch_axis is None else {"batch_axis": spec.batch_axis}
            return {"whole": True, **axis} if spec.whole else axis

        out: dict[str, Any] = {"version": LAYOUT_VERSION}
        if self.inputs:
            out["inputs"] = {name: entry(spec) for name, spec in self.inputs.items()}
        if self.outputs:
            out["outputs"] = {name: {"batch_axis": axis} for name, axis in self.outputs.items()}
        if self.sequence is not None:
            out["sequence"] = {
                "steps": self.sequence.steps,
                "feedback": dict(self.sequence.feedback),
            }
        return out


@dataclass(frozen=True)
class SequenceRun:
    """Sequences as a model ran them, its own outputs fed back: the sequence data and every
    output of every call, in the order of the single-call data made from it."""

    sequences: Dataset
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    """Named input arrays holding samples as ``layout`` says, and optional integer labels (one
    per sample, or per call of a sequence: shape [N, steps]).

    Raises:
        DataLayoutError: an array or the labels do not follow the layout (names which).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    layout: Layout = field(default_factory=Layout)
    origin: SequenceRun | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def size(self) -> int:
        """Samples (for a sequence data set: sequences)."""
        name, axis = self._counted()
        return int(self.inputs[name].shape[axis])

    @property
    def calls(self) -> int:
        """Model calls the samples make."""
        steps = self.layout.sequence.steps if self.layout.sequence else 1
        return self.size * steps

    def take(self, index: np.ndarray | slice) -> Dataset:
        """The samples at ``index`` (whole inputs unchanged)."""
        inputs = {}
        for name, arr in self.inputs.items():
            spec = self.layout.input(name)
            keep = spec.whole or spec.batch_axis is None
            inputs[name] = arr if keep else _select(arr, spec.batch_axis or 0, index)
        labels = None if self.labels is None else self.labels[index]
        return Dataset(inputs=inputs, labels=labels, layout=self.layout)

    def batches(self, batch: int) -> Iterator[tuple[int, Feed]]:
        """(samples, feed) of consecutive model calls of up to ``batch`` samples each.

        Raises:
            SampleLayoutError: a sequence data set (run it through a model first).
        """
        if self.layout.sequence is not None:
            raise SampleLayoutError(
                "data", "is a sequence of calls: materialise() it with a model first"
            )
        for start in range(0, self.size, max(1, batch)):
            stop = min(start + max(1, batch), self.size)
            yield stop - start, self._feed(slice(start, stop), stop - start)

    def feeds(self, batch: int) -> list[Feed]:
        """Model calls of up to ``batch`` samples each (see :meth:`batches`)."""
        return [feed for _, feed in self.batches(batch)]

    def sample_feed(self, index: int) -> Feed:
        """The call of sample ``index`` alone (batch 1)."""
        return next(self.take(slice(index, index + 1)).batches(1))[1]

    def first_call(self) -> Feed:
        """The first call of the first sample (for a sequence, with the first values of its
        fed-back inputs): what tracing a model or inferring its signature needs."""
        feed = self._feed(slice(0, 1), 1)
        for name, arr in feed.items():
            if self.layout.stepped(name):
                feed[name] = np.take(arr, 0, axis=(self.layout.input(name).batch_axis or 0) + 1)
        return feed

    def call_shape(self, name: str) -> tuple[int, ...]:
        """The shape of input ``name`` in one call of all the samples (no step axis)."""
        shape = self.inputs[name].shape
        if self.layout.stepped(name):
            axis = self.layout.input(name).batch_axis or 0
            return shape[: axis + 1] + shape[axis + 2 :]
        return tuple(shape)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = dict(self.inputs)
        if self.labels is not None:
            arrays[LABELS_KEY] = self.labels
        if self.layout != Layout():
            arrays[LAYOUT_KEY] = json.dumps(self.layout.as_json())
        np.savez(path, **arrays)

    def _counted(self) -> tuple[str, int]:
        """The first input holding samples, and its batch axis."""
        for name in self.inputs:
            spec = self.layout.input(name)
            if not spec.whole and spec.batch_axis is not None:
                return name, spec.batch_axis
        raise SampleLayoutError("data", "has no input holding samples")  # _validate refuses it

    def _feed(self, index: slice, count: int) -> Feed:
        feed: Feed = {}
        for name, arr in self.inputs.items():
            spec = self.layout.input(name)
            if spec.batch_axis is None:
                feed[name] = arr
            elif spec.whole:
                feed[name] = np.repeat(arr, count, axis=spec.batch_axis) if count > 1 else arr
            else:
                feed[name] = _select(arr, spec.batch_axis, index)
        return feed


def _select(arr: np.ndarray, axis: int, index: np.ndarray | slice) -> np.ndarray:
    return arr[(slice(None),) * axis + (index,)]


def _validate(data: Dataset) -> None:
    layout, inputs = data.layout, data.inputs
    if not inputs:
        raise SampleLayoutError("data", "needs at least one input array")
    names = sorted(inputs)
    for name in layout.inputs:
        if name not in inputs:
            raise LayoutSyntaxError(
                f"layout key inputs.{name}",
                f"names an input the data does not hold (inputs: {names})",
            )
    sequence = layout.sequence
    for fed in sequence.feedback if sequence else ():
        if fed not in inputs:
            raise LayoutSyntaxError(
                f"layout key sequence.feedback.{fed}",
                f"names an input the data does not hold (inputs: {names}): the file holds its "
                "value for the first call",
            )
        if layout.input(fed).batch_axis is None:
            raise SampleLayoutError(
                f"input {fed!r}",
                "is fed back between calls, so its value differs per sample: give it a batch_axis",
            )
    counts: dict[str, tuple[int, int]] = {}
    for name, arr in inputs.items():
        counted = _check_input(name, arr, layout)
        if counted is not None:
            counts[name] = counted
    if not counts:
        raise SampleLayoutError(
            "data", "has no input holding samples: every input is whole; give one a batch_axis"
        )
    first, (size, axis) = next(iter(counts.items()))
    for name, (count, other_axis) in counts.items():
        if count != size:
            raise SampleLayoutError(
                f"input {name!r}",
                f"has {count} samples on axis {other_axis}, input {first!r} has {size} on axis "
                f"{axis} (inputs must share the sample count)",
            )
    if size == 0:
        raise SampleLayoutError(f"input {first!r}", f"holds no samples (axis {axis} is empty)")
    _check_labels(data.labels, size, sequence)


def _check_input(name: str, arr: np.ndarray, layout: Layout) -> tuple[int, int] | None:
    """(samples, batch axis) an input holds, or None for a whole one."""
    subject = f"input {name!r}"
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in NUMBER_KINDS:
        kind = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise SampleLayoutError(subject, f"holds {kind} values; inputs are bool, int or float")
    spec = layout.input(name)
    if spec.batch_axis is None:
        return None
    axis = spec.batch_axis
    stepped = layout.stepped(name)
    if arr.ndim < axis + 1 + stepped:
        after = " and the step axis after it" if stepped else ""
        raise SampleLayoutError(
            subject, f"has shape {list(arr.shape)}: no batch axis {axis}{after}"
        )
    if spec.whole:
        if arr.shape[axis] != 1:
            raise SampleLayoutError(
                subject,
                f"is whole with batch_axis {axis}, which must have size 1 (it is repeated to "
                f"each call's batch size), got shape {list(arr.shape)}",
            )
        return None
    if stepped and layout.sequence is not None and arr.shape[axis + 1] != layout.sequence.steps:
        raise SampleLayoutError(
            subject,
            f"has {arr.shape[axis + 1]} steps on axis {axis + 1} (after its batch axis), the "
            f"sequence has {layout.sequence.steps}",
        )
    return int(arr.shape[axis]), axis


def _check_labels(labels: np.ndarray | None, size: int, sequence: SequenceLayout | None) -> None:
    if labels is None:
        return
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise SampleLayoutError("labels", f"must be integers, got {kind}")
    want = (size,) if sequence is None else (size, sequence.steps)
    if labels.shape[: len(want)] != want:
        per = "sample" if sequence is None else "call: [samples, steps]"
        raise SampleLayoutError(
            "labels",
            f"have shape {list(labels.shape)}, the data needs {list(want)} (one per {per})",
        )


# --- the layout entry ---------------------------------------------------------------------------


def parse_layout(text: str) -> Layout:
    """The layout a data file's JSON ``layout`` entry declares, checked key by key.

    Raises:
        LayoutSyntaxError: not JSON, an unknown or missing key, a value of the wrong type.
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise LayoutSyntaxError("layout entry", f"is not JSON ({e})") from e
    top = _object(raw, "", {"version", "inputs", "outputs", "sequence"})
    version = top.get("version", LAYOUT_VERSION)
    if not _is_int(version) or version != LAYOUT_VERSION:
        raise LayoutSyntaxError(
            "layout key version", f"must be {LAYOUT_VERSION}, got {_shown(version)}"
        )
    inputs = {
        name: _input_layout(f"inputs.{name}", entry)
        for name, entry in _object(top.get("inputs", {}), "inputs").items()
    }
    outputs = {}
    for name, entry in _object(top.get("outputs", {}), "outputs").items():
        key = f"outputs.{name}"
        spec = _object(entry, key, {"batch_axis"}, required={"batch_axis"})
        outputs[name] = _axis(f"{key}.batch_axis", spec["batch_axis"])
    sequence = None
    if "sequence" in top:
        sequence = _sequence(top["sequence"])
    return Layout(inputs=inputs, outputs=outputs, sequence=sequence)


def _input_layout(key: str, entry: object) -> InputLayout:
    spec = _object(entry, key, {"batch_axis", "whole"})
    if not spec:
        raise LayoutSyntaxError(f"layout key {key}", 'is empty: give "batch_axis" or "whole"')
    whole = spec.get("whole", False)
    if not isinstance(whole, bool):
        raise LayoutSyntaxError(
            f"layout key {key}.whole", f"must be true or false, got {_shown(whole)}"
        )
    if "batch_axis" in spec:
        return InputLayout(batch_axis=_axis(f"{key}.batch_axis", spec["batch_axis"]), whole=whole)
    return InputLayout(batch_axis=None, whole=True) if whole else InputLayout()


def _sequence(entry: object) -> SequenceLayout:
    spec = _object(entry, "sequence", {"steps", "feedback"}, required={"steps", "feedback"})
    steps = spec["steps"]
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise LayoutSyntaxError(
            "layout key sequence.steps",
            f"must be an integer from 1 to {MAX_STEPS}, got {_shown(steps)}",
        )
    feedback = _object(spec["feedback"], "sequence.feedback")
    if not feedback:
        raise LayoutSyntaxError(
            "layout key sequence.feedback",
            'is empty: map each state input to the output fed back to it, e.g. {"state": '
            '"stateN"} (calls without feedback are separate samples)',
        )
    for fed, output in feedback.items():
        if not isinstance(output, str) or not output:
            raise LayoutSyntaxError(
                f"layout key sequence.feedback.{fed}", f"must name an output, got {_shown(output)}"
            )
    return SequenceLayout(steps=steps, feedback=dict(feedback))


def _object(
    value: object, key: str, allowed: Collection[str] | None = None, required: Collection[str] = ()
) -> dict[str, Any]:
    where = f"layout key {key}" if key else "layout entry"
    if not isinstance(value, dict):
        raise LayoutSyntaxError(where, f"must be a JSON object, got {_shown(value)}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise LayoutSyntaxError(
                where, f"has unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )
    missing = sorted(set(required) - set(value))
    if missing:
        raise LayoutSyntaxError(where, f"needs key {missing[0]!r}")
    return value


def _axis(key: str, value: object) -> int:
    if not _is_int(value) or not 0 <= value < MAX_RANK:
        raise LayoutSyntaxError(
            f"layout key {key}",
            f"must be an axis, an integer from 0 to {MAX_RANK - 1}, got {_shown(value)}",
        )
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = (
        json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool)) else repr(value)
    )
    return text if len(text) <= 60 else text[:57] + "..."


# --- files ---------------------------------------------------------------------------------------


def load_npz(path: Path, *, labels_key: str = LABELS_KEY) -> Dataset:
    """Read a data set; the array named ``labels_key`` (if any) holds the labels and the JSON
    string named ``layout`` (if any) the layout.

    Raises:
        DataMismatchError: the file is missing or not an ``.npz``; DataLayoutError (a leaf of
            it): its layout or arrays are inconsistent, naming the input or key and the file.
    """
    if not path.is_file():
        raise DataMismatchError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataMismatchError(f"{path} is not a readable .npz file: {e}") from e
    labels = arrays.pop(labels_key, None)
    try:
        raw = arrays.pop(LAYOUT_KEY, None)
        layout = Layout() if raw is None else parse_layout(_layout_text(raw))
        return Dataset(inputs=arrays, labels=labels, layout=layout)
    except DataLayoutError as e:
        raise e.at(str(path)) from e


def _layout_text(raw: np.ndarray) -> str:
    if raw.ndim == 0 and raw.dtype.kind == "U":
        return str(raw[()])
    if raw.ndim == 0 and raw.dtype.kind == "S":
        try:
            return bytes(raw[()]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise LayoutSyntaxError("layout entry", f"is not UTF-8 text ({e.reason})") from e
    raise LayoutSyntaxError(
        "layout entry",
        f"must be one JSON string (np.savez(..., layout=json.dumps({{...}}))), got an array of "
        f"{raw.dtype} and shape {list(raw.shape)}",
    )


# --- data against a model ------------------------------------------------------------------------


def check_against_signature(data: Dataset, signature: IOSignature, *, what: str) -> Dataset:
    """The data with inputs cast to the model's dtypes, after checking names, per-call shapes
    (every dimension but a batch axis) and the outputs the layout names.

    Raises:
        DataMismatchError: names differ, ranks differ, or a fixed dimension does not match.
        DataLayoutError: the layout names an output the model does not have.
    """
    expected = [spec.name for spec in signature.inputs]
    if sorted(expected) != sorted(data.inputs):
        raise DataMismatchError(
            f"{what} data has inputs {sorted(data.inputs)}, the model expects {sorted(expected)}",
            expected=expected,
            got=list(data.inputs),
        )
    _check_outputs(data.layout, [spec.name for spec in signature.outputs], what)
    cast: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = data.inputs[spec.name]
        shape = data.call_shape(spec.name)
        layout = data.layout.input(spec.name)
        if len(shape) != len(spec.shape):
            raise DataMismatchError(
                f"{what} input {spec.name!r} has shape {list(shape)} per call, the model "
                f"expects rank {len(spec.shape)} {_shape_text(spec.shape)}",
                expected=expected,
                got=list(data.inputs),
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
            if axis == layout.batch_axis or want is None:
                continue  # the sample count may differ from the model's batch size
            if want != got:
                raise DataMismatchError(
                    f"{what} input {spec.name!r} has shape {list(shape)} per call, the model "
                    f"expects {_shape_text(spec.shape)} (dimension {axis}: {got} != {want})",
                    expected=expected,
                    got=list(data.inputs),
                )
        kind_ok = np.issubdtype(arr.dtype, np.floating) == spec.dtype.startswith("float")
        if not kind_ok:
            raise DataMismatchError(
                f"{what} input {spec.name!r} is {arr.dtype}, the model expects {spec.dtype}"
            )
        cast[spec.name] = arr.astype(spec.dtype, copy=False)
    return replace(data, inputs=cast)


def _check_outputs(layout: Layout, outputs: list[str], what: str) -> None:
    for name in layout.outputs:
        if name not in outputs:
            raise LayoutSyntaxError(
                f"layout key outputs.{name}",
                f"of the {what} data names an output the model does not have (outputs: {outputs})",
            )
    for fed, output in (layout.sequence.feedback if layout.sequence else {}).items():
        if output not in outputs:
            raise FeedbackError(
                f"output {output!r}",
                f"is fed back to input {fed!r} in the {what} data, but the model has no such "
                f"output (outputs: {outputs})",
            )


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
