"""Recipes validate their targets and ratios; data sets are checked against model signatures."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.controller.compress.data import Dataset, check_against_signature, load_npz
from edgefleet.controller.compress.recipe import Recipe, parse_student_spec, validate_targets
from edgefleet.controller.errors import CompressionError, DataMismatchError, UnknownTargetError
from edgefleet.shared.manifest import IOSignature, TensorSpec

SIGNATURE = IOSignature(
    inputs=(
        TensorSpec(name="features", dtype="float32", shape=(None, 16)),
        TensorSpec(name="token_ids", dtype="int64", shape=(None, 4)),
    ),
    outputs=(TensorSpec(name="scores", dtype="float32", shape=(None, 3)),),
)


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(UnknownTargetError, match="onnx-int4") as info:
        validate_targets(["onnx-fp32", "onnx-int4"])
    assert "tflite-full-int8" in info.value.known


def test_targets_are_deduplicated_in_order() -> None:
    assert validate_targets(["onnx-int8", "onnx-fp32", "onnx-int8"]) == ("onnx-int8", "onnx-fp32")


@pytest.mark.parametrize(
    "kwargs",
    [{"prune_sparsity": 1.0}, {"structured_ratio": -0.1}, {"targets": ()}, {"finetune_epochs": -1}],
)
def test_bad_recipes_are_refused(kwargs: dict) -> None:
    with pytest.raises(CompressionError):
        Recipe(**kwargs)


def test_student_spec() -> None:
    assert parse_student_spec("mlp:128,32") == (128, 32)
    for bad in ("cnn:3", "mlp:", "mlp:a", "mlp:0"):
        with pytest.raises(CompressionError, match="mlp:WIDTH"):
            parse_student_spec(bad)


def _data(**overrides: np.ndarray) -> Dataset:
    inputs = {"features": np.zeros((5, 16), np.float32), "token_ids": np.zeros((5, 4), np.int64)}
    inputs.update(overrides)
    return Dataset(inputs=inputs)


def test_matching_data_is_cast_to_model_dtypes() -> None:
    checked = check_against_signature(
        _data(token_ids=np.zeros((5, 4), np.int32)), SIGNATURE, what="eval"
    )
    assert checked.inputs["token_ids"].dtype == np.int64


def test_missing_input_name_is_reported() -> None:
    data = Dataset(inputs={"features": np.zeros((5, 16), np.float32)})
    with pytest.raises(DataMismatchError, match="token_ids") as info:
        check_against_signature(data, SIGNATURE, what="eval")
    assert info.value.got == ("features",)


def test_wrong_feature_dimension_is_reported() -> None:
    with pytest.raises(DataMismatchError, match=r"dimension 1: 15 != 16"):
        check_against_signature(
            _data(features=np.zeros((5, 15), np.float32)), SIGNATURE, what="eval"
        )


def test_wrong_rank_and_dtype_kind_are_reported() -> None:
    with pytest.raises(DataMismatchError, match="rank"):
        check_against_signature(
            _data(features=np.zeros((5, 4, 4), np.float32)), SIGNATURE, what="e"
        )
    with pytest.raises(DataMismatchError, match="expects int64"):
        check_against_signature(_data(token_ids=np.zeros((5, 4), np.float32)), SIGNATURE, what="e")


def test_npz_round_trip_with_labels(tmp_path) -> None:
    data = Dataset(
        inputs={"x": np.arange(6, dtype=np.float32).reshape(3, 2)}, labels=np.array([0, 1, 1])
    )
    data.save(tmp_path / "d.npz")
    loaded = load_npz(tmp_path / "d.npz")
    assert list(loaded.inputs) == ["x"]
    assert loaded.labels is not None
    np.testing.assert_array_equal(loaded.labels, [0, 1, 1])


def test_npz_errors(tmp_path) -> None:
    with pytest.raises(DataMismatchError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataMismatchError, match="not a readable"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "ragged.npz", a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(DataMismatchError, match="share"):
        load_npz(tmp_path / "ragged.npz")
