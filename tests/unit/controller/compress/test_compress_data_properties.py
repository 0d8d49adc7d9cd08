"""Properties of the data format over random files: any mix of arrays, labels and (often
malformed) ``layout`` entries either loads into feeds that follow the declared layout, and
sequences into single calls whose fed-back inputs hold what the model fed back, or is refused
with a one-line DataMismatchError; never another exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefleet.controller.compress.data import LAYOUT_KEY, Call, Dataset, load_npz
from edgefleet.controller.compress.evaluate import materialise
from edgefleet.controller.errors import DataMismatchError

NAMES = ("a", "b", "c")
DTYPES = ("float32", "int64", "bool", "<U2", "complex64")

axes = st.one_of(st.integers(-2, 5), st.booleans(), st.text(max_size=2), st.none())
input_entries = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"batch_axis": axes, "whole": st.one_of(st.booleans(), st.integers(0, 1))}
    ),
    st.fixed_dictionaries({"axis": st.integers(0, 2)}),
    st.integers(),
)
feedback = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(("own", "missing", "number"))), max_size=3
).map(lambda pairs: {n: {"own": f"o_{n}", "missing": "nope", "number": 3}[k] for n, k in pairs})
layouts = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from((1, 2, "1")),
        "inputs": st.dictionaries(st.sampled_from((*NAMES, "zz")), input_entries, max_size=3),
        "outputs": st.dictionaries(
            st.sampled_from(("o_a", "o_b", "y")),
            st.one_of(st.fixed_dictionaries({"batch_axis": axes}), st.just({})),
            max_size=2,
        ),
        "sequence": st.fixed_dictionaries(
            {"steps": st.one_of(st.integers(-1, 3), st.text(max_size=1)), "feedback": feedback},
            optional={"extra": st.just(1)},
        ),
    },
)
entries = st.one_of(
    layouts.map(json.dumps),
    st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=3)).map(
        json.dumps
    ),
    st.text(max_size=5),  # often not JSON at all
    st.just(np.zeros(2)),
    st.none(),  # no layout: plain batch-first arrays
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=4)))
    if dtype == "<U2":
        return np.full(shape, "x", dtype=dtype)
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)


random_files = st.fixed_dictionaries(
    {
        "inputs": st.dictionaries(st.sampled_from(NAMES), arrays(), max_size=3),
        "layout": entries,
        "labels": st.one_of(st.none(), arrays()),
    }
)


@st.composite
def plausible_files(draw: st.DrawFn, *, sequences: bool = False) -> dict[str, Any]:
    """Files built to fit a random layout (a sequence one with ``sequences``), then sometimes
    spoilt in one place."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1 + sequences, max_size=3, unique=True))
    roles = {n: draw(st.sampled_from(("batched", "batched", "whole", "repeated"))) for n in names}
    samples, steps = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if sequences:
        roles[names[0]] = draw(st.sampled_from(("batched", "repeated")))
        roles[names[1]] = "batched"
    fed = [n for n in names[:-1] if roles[n] != "whole" and (n == names[0] or draw(st.booleans()))]
    sequence = sequences and bool(fed)
    inputs, entries = {}, {}
    for name in names:
        shape = draw(st.lists(st.integers(1, 3), max_size=2))
        axis = draw(st.integers(0, len(shape)))
        dtype = draw(st.sampled_from(("float32", "float32", "int64", "bool")))
        if roles[name] == "whole":
            entries[name] = {"whole": True}
        elif roles[name] == "repeated":
            shape.insert(axis, 1)
            entries[name] = {"whole": True, "batch_axis": axis}
        else:
            shape.insert(axis, samples)
            if sequence and name not in fed:
                shape.insert(axis + 1, steps)  # one value per call
            entries[name] = {"batch_axis": axis}
        inputs[name] = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
    layout: dict[str, Any] = {"inputs": entries}
    if sequence:
        layout["sequence"] = {"steps": steps, "feedback": {n: f"o_{n}" for n in fed}}
    spoil = draw(st.sampled_from((None,) * 6 + ("dims", "dtype", "axis", "steps")))
    victim = draw(st.sampled_from(names))
    if spoil == "dims":
        inputs[victim] = inputs[victim][None]  # one axis more than the layout says
    elif spoil == "dtype":
        inputs[victim] = np.full(inputs[victim].shape, "x")
    elif spoil == "axis":
        entries[victim] = {"batch_axis": draw(st.integers(0, 4))}
    elif spoil == "steps" and "sequence" in layout:
        layout["sequence"]["steps"] = draw(st.integers(1, 4))
    labels = draw(st.sampled_from((None, (samples,), (samples, steps), (samples + 1,))))
    return {
        "inputs": inputs,
        "layout": json.dumps(layout),
        "labels": None if labels is None else np.zeros(labels, np.int64),
    }


files = st.one_of(random_files, plausible_files(), plausible_files(sequences=True))


def _write(work: Path, spec: dict[str, Any], number: int) -> Path:
    path = work / f"data-{number}.npz"
    extra: dict[str, Any] = {}
    if spec["layout"] is not None:
        extra[LAYOUT_KEY] = spec["layout"]
    if spec["labels"] is not None:
        extra["labels"] = spec["labels"]
    np.savez(path, **spec["inputs"], **extra)
    return path


def assert_feeds_follow_the_layout(data: Dataset, batch: int) -> None:
    """Each call carries ``count`` samples on every batch axis, whole inputs as they are (or
    repeated to the count), and the calls together hold every sample exactly once, in order."""
    done = 0
    for count, feed in data.batches(batch):
        assert 1 <= count <= batch
        assert set(feed) == set(data.inputs)
        for name, arr in data.inputs.items():
            spec = data.layout.input(name)
            if spec.batch_axis is None:
                np.testing.assert_array_equal(feed[name], arr)
                continue
            axis = spec.batch_axis
            if spec.whole:
                want = np.repeat(arr, count, axis=axis)
            else:
                want = np.take(arr, range(done, done + count), axis=axis)
            assert feed[name].shape == want.shape
            np.testing.assert_array_equal(feed[name], want)
        done += count
    assert done == data.size


def fed_back_plus_one(data: Dataset) -> Call:
    """A model whose output o_X is its input X plus one, and y one value per sample."""
    sequence = data.layout.sequence
    assert sequence is not None

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = {}
        for fed, output in sequence.feedback.items():
            outputs[output] = feed[fed] + 1
        fed, output = next(iter(sequence.feedback.items()))
        count = feed[fed].shape[data.layout.input(fed).batch_axis or 0]
        outputs["y"] = np.zeros(count, np.float32)
        return outputs

    return call


_counter = iter(range(10**9))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-properties")


def _refused_or(load: Callable[[], Dataset]) -> Dataset | DataMismatchError:
    try:
        return load()
    except DataMismatchError as e:
        return e


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=files, batch=st.integers(1, 3))
def test_any_file_loads_into_feeds_that_follow_its_layout_or_is_refused(
    work: Path, spec: dict[str, Any], batch: int
) -> None:
    path = _write(work, spec, next(_counter))
    data = _refused_or(lambda: load_npz(path))
    if isinstance(data, DataMismatchError):
        event("refused on loading")
        assert "\n" not in str(data)
        assert str(data).startswith(str(path)) or "is not a readable .npz" in str(data)
        return
    sequence = data.layout.sequence
    if sequence is None:
        event("loaded: single calls")
        assert_feeds_follow_the_layout(data, batch)
        return
    flat = _refused_or(lambda: materialise(data, fed_back_plus_one(data), batch))
    if isinstance(flat, DataMismatchError):
        event("sequence refused when run")
        assert "\n" not in str(flat)
        return
    event("loaded: sequence")
    assert flat.layout.sequence is None
    assert flat.size == data.size * sequence.steps
    assert_feeds_follow_the_layout(flat, batch)
    for fed, output in sequence.feedback.items():
        if output != f"o_{fed}" or data.inputs[fed].dtype.kind not in "iuf":
            continue
        axis = data.layout.input(fed).batch_axis or 0
        first = data.inputs[fed]
        if data.layout.input(fed).whole:
            first = np.repeat(first, data.size, axis=axis)
        for n in range(data.size):
            for t in range(sequence.steps):
                call = np.take(flat.inputs[fed], [n * sequence.steps + t], axis=axis)
                want = np.take(first, [n], axis=axis) + t
                np.testing.assert_array_equal(call, want.astype(call.dtype))
