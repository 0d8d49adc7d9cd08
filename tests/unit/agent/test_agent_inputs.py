"""edgefleet.agent.inputs: requests that do not match the signed signature are client errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.errors import BadInputError
from edgefleet.agent.inputs import arrays_from_json, check_inputs
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
