"""edgefleet.agent.inputs: requests that do not match the signed signature are client errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.errors import BadInputError
from edgefleet.agent.inputs import (
    InputChecker,
    arrays_from_json,
    check_inputs,
    json_value_budget,
)
from edgefleet.shared import IOSignature, TensorSpec

SIG = IOSignature(
    inputs=(
        TensorSpec(name="x", dtype="float32", shape=(None, 4)),
        TensorSpec(name="ids", dtype="int64", shape=(None,)),
    ),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(None,)),),
)


def good():
    return {"x": np.zeros((2, 4), np.float32), "ids": np.zeros(2, np.int64)}


def test_accepts_matching_inputs_with_any_dynamic_size():
    assert set(check_inputs(SIG, good())) == {"x", "ids"}
    check_inputs(SIG, {"x": np.zeros((9, 4), np.float32), "ids": np.zeros(1, np.int64)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"z": np.zeros(1)}, "unknown input 'z'"),
        ({"x": np.zeros((2, 4), np.float64)}, "dtype float64, expected float32"),
        ({"x": np.zeros((2, 5), np.float32)}, "shape [2, 5]"),
        ({"x": np.zeros((0, 4), np.float32)}, "shape [0, 4]"),
        ({"x": [[0, 0, 0, 0]]}, "not a numpy array"),
    ],
)
def test_rejects(change, message):
    with pytest.raises(BadInputError) as info:
        check_inputs(SIG, {**good(), **change})
    assert message in str(info.value)


def test_missing_input():
    with pytest.raises(BadInputError, match="missing input 'ids'"):
        check_inputs(SIG, {"x": np.zeros((1, 4), np.float32)})


def test_json_casts_to_signed_dtypes():
    arrays = arrays_from_json(SIG, {"inputs": {"x": [[1, 2, 3, 4]], "ids": [7]}})
    assert arrays["x"].dtype == np.float32
    assert arrays["ids"].dtype == np.int64


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": {"x": [[1, 2, 3, 4]], "ids": [1.5]}}, "holds floats, expected int64"),
        ({"inputs": {"x": [[1, 2, 3, 4]], "ids": [2**70]}}, "ids"),
        ({"inputs": {"x": [[1, 2], [3]], "ids": [1]}}, "rectangular"),
        ({"x": []}, "must be a JSON object"),
    ],
)
def test_json_rejects(payload, message):
    with pytest.raises(BadInputError, match=message):
        arrays_from_json(SIG, payload)


@pytest.mark.parametrize(
    "value",
    [
        [["a", "b", "c", "d"]],
        [[1, 2, 3, None]],
        [[1, 2, 3, {"k": 1}]],
        [[1, 2, 3, 4], [1, 2, 3, "4"]],
    ],
)
def test_json_refuses_non_numbers_before_numpy_sees_them(value):
    with pytest.raises(BadInputError, match="values, expected numbers"):
        arrays_from_json(SIG, {"inputs": {"x": value, "ids": [1]}})


def test_json_accepts_booleans_and_mixed_ints_and_floats():
    arrays = arrays_from_json(SIG, {"inputs": {"x": [[True, 1, 2.5, 0]], "ids": [True]}})
    np.testing.assert_array_equal(arrays["x"], np.array([[1, 1, 2.5, 0]], np.float32))


def test_json_value_budget_follows_the_model_inputs():
    fixed = IOSignature(
        inputs=(TensorSpec(name="x", dtype="float32", shape=(1, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(1,)),),
    )
    # 4 numbers and 2 lists, each with a comma at most, plus name, colon, comma and envelope
    assert json_value_budget(fixed, max_input_bytes=10**9, max_json_values=10**6) == 23
    scalar = IOSignature(
        inputs=(TensorSpec(name="s", dtype="int64", shape=()),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(1,)),),
    )
    assert json_value_budget(scalar, max_input_bytes=10**9, max_json_values=10**6) == 13
    # dynamic: what max_input_bytes holds (x: 1000 float32 in up to 1001 lists, 4005 values;
    # ids: 500 int64 in one list, 1005), then the cap
    assert json_value_budget(SIG, max_input_bytes=4000, max_json_values=10**6) == 5018
    assert json_value_budget(SIG, max_input_bytes=4000, max_json_values=100) == 100


_DIM = st.one_of(st.none(), st.integers(0, 3))
_DTYPES = st.sampled_from(["float32", "int64", "uint8"])


@st.composite
def _signature_and_inputs(draw):
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    specs = [
        TensorSpec(name=n, dtype=draw(_DTYPES), shape=tuple(draw(st.lists(_DIM, max_size=3))))
        for n in names
    ]
    signature = IOSignature(
        inputs=tuple(specs), outputs=(TensorSpec(name="y", dtype="float32", shape=(None,)),)
    )
    given = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
    inputs: dict[str, object] = {}
    for name in given:
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        dtype = draw(st.sampled_from(["float32", "int64", "uint8", ">f4", "float64"]))
        value = np.zeros(shape, np.dtype(dtype))
        inputs[name] = draw(st.sampled_from([value, value.tolist()]))
    return signature, inputs


@settings(max_examples=400, deadline=None)
@given(_signature_and_inputs())
def test_the_precomputed_checker_decides_exactly_as_check_inputs(case):
    signature, inputs = case
    try:
        check_inputs(signature, inputs)
        expected = None
    except BadInputError as e:
        expected = str(e)
    if expected is None:
        assert InputChecker(signature)(inputs) is inputs
    else:
        with pytest.raises(BadInputError) as caught:
            InputChecker(signature)(inputs)
        assert str(caught.value) == expected
