"""The data format's ``layout`` entry: inputs on any batch axis, whole inputs (scalars, constants,
a first state), sequences of calls with an output fed back; each refusal names what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress.data import (
    LAYOUT_KEY,
    DataLayoutError,
    Dataset,
    FeedbackError,
    InputLayout,
    Layout,
    LayoutSyntaxError,
    SampleLayoutError,
    SequenceLayout,
    check_against_signature,
    load_npz,
)
from edgefleet.controller.compress.evaluate import call_batch, materialise, run_calls
from edgefleet.controller.errors import DataMismatchError
from edgefleet.shared.manifest import IOSignature, TensorSpec

KEY = "layout key "
VAD_LAYOUT = {
    "inputs": {"state": {"whole": True, "batch_axis": 1}, "sr": {"whole": True}},
    "sequence": {"steps": 3, "feedback": {"state": "stateN"}},
}
VAD_SIGNATURE = IOSignature(
    inputs=(
        TensorSpec(name="input", dtype="float32", shape=(None, None)),
        TensorSpec(name="state", dtype="float32", shape=(2, None, 4)),
        TensorSpec(name="sr", dtype="int64", shape=()),
    ),
    outputs=(
        TensorSpec(name="output", dtype="float32", shape=(None, 1)),
        TensorSpec(name="stateN", dtype="float32", shape=(None, None, None)),
    ),
)


def _vad_arrays(n: int = 5, steps: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((n, steps, 6)).astype(np.float32),
        "state": np.zeros((2, 1, 4), np.float32),
        "sr": np.array(16000, np.int64),
    }


def _save(path: Path, layout: object, **arrays: np.ndarray) -> Path:
    entry = layout if isinstance(layout, np.ndarray) else json.dumps(layout)
    np.savez(path, **arrays, **{LAYOUT_KEY: entry})
    return path


def vad_call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in for a stateful model: state [2, B, 4] accumulates each call's input mean."""
    x, state = feed["input"], feed["state"]
    assert feed["sr"].shape == ()
    assert state.shape == (2, x.shape[0], 4)
    new = state + x.mean(axis=1)[None, :, None]
    return {"output": new[0, :, :1] * 0.5, "stateN": new}


def test_plain_batch_first_files_load_as_before_and_save_without_a_layout(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    Dataset({"x": x}, labels=np.arange(6)).save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as npz:
        assert sorted(npz.files) == ["labels", "x"]
    data = load_npz(tmp_path / "plain.npz")
    assert data.layout == Layout()
    assert (data.size, data.calls) == (6, 6)
    feeds = data.feeds(4)
    assert [f["x"].shape for f in feeds] == [(4, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x)


def test_a_stateful_audio_layout_loads_and_round_trips(tmp_path: Path) -> None:
    data = load_npz(_save(tmp_path / "vad.npz", VAD_LAYOUT, **_vad_arrays()))
    assert data.layout.input("state") == InputLayout(batch_axis=1, whole=True)
    assert data.layout.input("sr") == InputLayout(batch_axis=None, whole=True)
    assert data.layout.sequence == SequenceLayout(steps=3, feedback={"state": "stateN"})
    assert (data.size, data.calls) == (5, 15)
    assert data.call_shape("input") == (5, 6)
    first = data.first_call()
    assert {k: v.shape for k, v in first.items()} == {"input": (1, 6), "state": (2, 1, 4), "sr": ()}
    with pytest.raises(SampleLayoutError, match="materialise"):
        data.feeds(2)
    data.save(tmp_path / "again.npz")
    assert load_npz(tmp_path / "again.npz").layout == data.layout


def test_feeds_repeat_whole_inputs_to_the_batch_and_slice_any_batch_axis() -> None:
    layout = Layout(
        inputs={"state": InputLayout(batch_axis=1), "h0": InputLayout(1, whole=True),
                "sr": InputLayout(None, whole=True)},
    )  # fmt: skip
    state = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    data = Dataset(
        {"state": state, "h0": np.ones((2, 1, 3), np.float32), "sr": np.array(8000)},
        layout=layout,
    )
    (full, part) = list(data.batches(3))
    assert (full[0], part[0]) == (3, 2)
    assert (full[1]["state"].shape, full[1]["h0"].shape) == ((2, 3, 3), (2, 3, 3))
    assert (part[1]["h0"].shape, part[1]["sr"].shape) == ((2, 2, 3), ())
    np.testing.assert_array_equal(part[1]["state"], state[:, 3:])
    single = data.sample_feed(4)
    np.testing.assert_array_equal(single["state"], state[:, 4:5])
    assert single["h0"].shape == (2, 1, 3)
    assert data.take(np.array([0, 2])).inputs["state"].shape == (2, 2, 3)


def test_materialise_feeds_each_call_the_state_of_the_call_before() -> None:
    arrays = _vad_arrays()
    data = Dataset(
        arrays,
        labels=np.arange(15).reshape(5, 3),
        layout=Layout(
            inputs={"state": InputLayout(1, whole=True), "sr": InputLayout(None, whole=True)},
            sequence=SequenceLayout(steps=3, feedback={"state": "stateN"}),
        ),
    )
    flat = materialise(data, vad_call, batch=2)
    assert flat.layout.sequence is None
    assert (flat.size, flat.inputs["input"].shape, flat.inputs["state"].shape) == (
        15, (15, 6), (2, 15, 4),
    )  # fmt: skip
    np.testing.assert_array_equal(flat.labels, np.arange(15))
    for n in range(5):  # call by call, by hand
        state = np.zeros((2, 1, 4), np.float32)
        for t in range(3):
            call = flat.sample_feed(3 * n + t)
            np.testing.assert_array_equal(call["input"], arrays["input"][n : n + 1, t])
            np.testing.assert_allclose(call["state"], state, rtol=1e-6)
            state = vad_call(call)["stateN"]
    assert flat.origin is not None
    assert flat.origin.sequences is data
    again = run_calls(flat, vad_call, batch=4)
    for name in ("output", "stateN"):
        np.testing.assert_allclose(again[name], flat.origin.outputs[name], rtol=1e-6)
    assert flat.origin.outputs["stateN"].shape == (2, 15, 4)


@pytest.mark.parametrize(
    ("layout", "subject", "reason"),
    [
        ("{not json", "layout entry", "is not JSON"),
        ([1, 2], "layout entry", "must be a JSON object"),
        ({"inputs": {}, "extra": 1}, "layout entry", "unknown key 'extra'"),
        ({"version": 2}, "layout key version", "must be 1, got 2"),
        ({"inputs": {"state": {"batch_axis": -1}}}, f"{KEY}inputs.state.batch_axis", "got -1"),
        ({"inputs": {"state": {"batch_axis": True}}}, f"{KEY}inputs.state.batch_axis", "got true"),
        ({"inputs": {"sr": {"whole": "yes"}}}, "layout key inputs.sr.whole", "true or false"),
        ({"inputs": {"sr": {}}}, "layout key inputs.sr", "is empty"),
        ({"inputs": {"sr": {"axis": 0}}}, "layout key inputs.sr", "unknown key 'axis'"),
        ({"outputs": {"stateN": {}}}, "layout key outputs.stateN", "needs key 'batch_axis'"),
        ({"sequence": {"steps": 0, "feedback": {"state": "s"}}}, f"{KEY}sequence.steps", "got 0"),
        ({"sequence": {"steps": 2}}, "layout key sequence", "needs key 'feedback'"),
        ({"sequence": {"steps": 2, "feedback": {}}}, "layout key sequence.feedback", "is empty"),
        ({"sequence": {"steps": 2, "feedback": {"state": 3}}}, "layout key sequence.feedback.state",
         "must name an output"),
        ({"inputs": {"nope": {"whole": True}}}, f"{KEY}inputs.nope", "names an input the data"),
        ({"sequence": {"steps": 3, "feedback": {"h": "hN"}}}, "layout key sequence.feedback.h",
         "names an input the data"),
    ],
)  # fmt: skip
def test_malformed_layouts_are_refused_naming_the_key(
    tmp_path: Path, layout: object, subject: str, reason: str
) -> None:
    raw = np.array(layout) if isinstance(layout, str) else layout
    path = _save(tmp_path / "bad.npz", raw, **_vad_arrays())
    with pytest.raises(LayoutSyntaxError) as caught:
        load_npz(path)
    error = caught.value
    assert error.subject == subject
    assert reason in error.reason
    assert str(error) == f"{path}: {subject} {error.reason}"
    assert "\n" not in str(error)


def test_a_layout_that_is_not_one_string_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((2, 2)), layout=np.zeros(3))
    with pytest.raises(
        LayoutSyntaxError, match=r"must be one JSON string .* float64 and shape \[3\]"
    ):
        load_npz(path)


@pytest.mark.parametrize(
    ("arrays", "layout", "subject", "reason"),
    [
        ({"state": np.zeros((2, 2, 4))}, {"inputs": {"state": {"whole": True, "batch_axis": 1}}},
         "input 'state'", "must have size 1"),
        ({"input": np.zeros((5, 2, 6))}, None, "input 'input'", "has 2 steps on axis 1"),
        ({"input": np.zeros((5,))}, None, "input 'input'", "no batch axis 0 and the step axis"),
        ({"state": np.zeros((2, 4, 4))}, {"inputs": {"state": {"batch_axis": 1}}},
         "input 'state'", "has 4 samples on axis 1, input 'input' has 5"),
        ({"labels": np.zeros((5,), np.int64)}, None, "labels", "needs [5, 3] (one per call"),
        ({"labels": np.zeros((5, 3), np.float32)}, None, "labels", "must be integers"),
        ({"sr": np.array(["16k"])}, None, "input 'sr'", "holds <U3 values"),
        ({"input": np.zeros((0, 3, 6), np.float32)}, None, "input 'input'", "holds no samples"),
        ({"state": np.zeros((2, 1, 4))}, {"inputs": {"state": {"whole": True}}}, "input 'state'",
         "is fed back between calls"),
    ],
)  # fmt: skip
def test_arrays_that_do_not_follow_the_layout_are_refused_naming_the_input(
    tmp_path: Path, arrays: dict, layout: dict | None, subject: str, reason: str
) -> None:
    merged = {**VAD_LAYOUT, **(layout or {})}
    if layout and "inputs" in layout:
        merged["inputs"] = {**VAD_LAYOUT["inputs"], **layout["inputs"]}
    path = _save(tmp_path / "bad.npz", merged, **{**_vad_arrays(), **arrays})
    with pytest.raises(SampleLayoutError) as caught:
        load_npz(path)
    assert caught.value.subject == subject
    assert reason in caught.value.reason, caught.value.reason
    assert "\n" not in str(caught.value)


def test_every_input_whole_is_refused() -> None:
    with pytest.raises(SampleLayoutError, match="no input holding samples"):
        Dataset({"sr": np.array(1)}, layout=Layout(inputs={"sr": InputLayout(None, whole=True)}))


def test_the_signature_check_skips_batch_axes_and_names_fed_back_outputs() -> None:
    data = Dataset(
        {**_vad_arrays(), "sr": np.array(16000, np.int32)},
        layout=Layout(
            inputs={"state": InputLayout(1, whole=True), "sr": InputLayout(None, whole=True)},
            sequence=SequenceLayout(steps=3, feedback={"state": "stateN"}),
        ),
    )
    checked = check_against_signature(data, VAD_SIGNATURE, what="evaluation")
    assert checked.inputs["sr"].dtype == np.int64
    assert checked.layout == data.layout
    wrong = IOSignature(inputs=VAD_SIGNATURE.inputs, outputs=VAD_SIGNATURE.outputs[:1])
    with pytest.raises(FeedbackError, match=r"output 'stateN' is fed back to input 'state'"):
        check_against_signature(data, wrong, what="evaluation")
    scalar = TensorSpec(name="sr", dtype="int64", shape=(1,))
    with pytest.raises(DataMismatchError, match=r"'sr' has shape \[\] per call.*rank 1"):
        check_against_signature(
            data,
            IOSignature(inputs=(*VAD_SIGNATURE.inputs[:2], scalar), outputs=VAD_SIGNATURE.outputs),
            what="evaluation",
        )
    narrow = TensorSpec(name="state", dtype="float32", shape=(2, None, 3))
    with pytest.raises(DataMismatchError, match=r"dimension 2: 4 != 3"):
        check_against_signature(
            data,
            IOSignature(
                inputs=(VAD_SIGNATURE.inputs[0], narrow, VAD_SIGNATURE.inputs[2]),
                outputs=VAD_SIGNATURE.outputs,
            ),
            what="evaluation",
        )


def test_call_batch_is_one_where_a_batch_axis_is_fixed() -> None:
    layout = Layout(inputs={"state": InputLayout(1), "sr": InputLayout(None, whole=True)})
    assert call_batch(VAD_SIGNATURE, layout, 32) == 32
    fixed = TensorSpec(name="state", dtype="float32", shape=(2, 1, 4))
    pinned = IOSignature(inputs=(VAD_SIGNATURE.inputs[0], fixed, VAD_SIGNATURE.inputs[2]),
                         outputs=VAD_SIGNATURE.outputs)  # fmt: skip
    assert call_batch(pinned, layout, 32) == 1


def test_a_fed_back_output_that_is_missing_or_misshapen_is_named() -> None:
    data = Dataset(
        _vad_arrays(),
        layout=Layout(
            inputs={"state": InputLayout(1, whole=True), "sr": InputLayout(None, whole=True)},
            sequence=SequenceLayout(steps=3, feedback={"state": "stateN"}),
        ),
    )

    def no_state(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": vad_call(feed)["output"]}

    def wide_state(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = vad_call(feed)
        return {**out, "stateN": np.concatenate([out["stateN"]] * 2, axis=2)}

    with pytest.raises(FeedbackError, match=r"output 'stateN' is fed back to input 'state', but"):
        materialise(data, no_state, batch=5)
    with pytest.raises(FeedbackError, match=r"has shape \[2, 5, 8\] for 5 samples.*\[2, 5, 4\]"):
        materialise(data, wide_state, batch=5)


def test_an_output_without_the_declared_batch_axis_is_named() -> None:
    data = Dataset({"x": np.zeros((4, 3), np.float32)})
    with pytest.raises(SampleLayoutError, match=r"output 'y' has shape \[3, 2\] for a call of 2"):
        run_calls(data, lambda feed: {"y": np.zeros((3, 2))}, batch=2)
    ok = Dataset({"x": np.zeros((4, 3), np.float32)}, layout=Layout(outputs={"y": 1}))
    joined = run_calls(ok, lambda feed: {"y": np.zeros((3, len(feed["x"])))}, batch=3)
    assert joined["y"].shape == (3, 4)


def test_errors_are_data_mismatch_errors() -> None:
    assert issubclass(DataLayoutError, DataMismatchError)
    error = SampleLayoutError("input 'x'", "is odd").at("f.npz")
    assert isinstance(error, SampleLayoutError)
    assert str(error) == "f.npz: input 'x' is odd"
