"""What is fixed up after onnx2tf, decided on values: an output that matches the ONNX model's
only once transposed from NHWC back to NCHW gets a TRANSPOSE (even when its shape cannot tell,
as with [N, 8, 8, 8]); one that matches neither way fails the target; inputs are matched to
the ONNX model's by name as TensorFlow sanitises them."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.controller.compress.onnx_to_tflite import _layouts_to_restore, _sanitised
from edgefleet.controller.errors import ConversionError

rng = np.random.default_rng(0)


def test_matching_outputs_need_nothing():
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    nchw = rng.normal(size=(6, 3, 5, 7)).astype(np.float32)
    got = {"logits": logits + 1e-6, "fmap": nchw.copy()}
    assert _layouts_to_restore({"logits": logits, "fmap": nchw}, got) == set()


@pytest.mark.parametrize("shape", [(6, 3, 5, 7), (6, 8, 8, 8), (6, 4, 9), (2, 3, 4, 5, 6)])
def test_an_nhwc_output_is_restored_even_when_its_shape_is_ambiguous(shape):
    nchw = rng.normal(size=shape).astype(np.float32)
    nhwc = np.moveaxis(nchw, 1, -1)  # what onnx2tf gives for an NCHW output
    assert _layouts_to_restore({"fmap": nchw}, {"fmap": nhwc}) == {"fmap"}


def test_an_output_that_matches_neither_way_fails_naming_it():
    nchw = rng.normal(size=(6, 3, 5, 7)).astype(np.float32)
    wrong = np.ascontiguousarray(nchw.transpose(0, 2, 1, 3)).reshape(6, 7, 5, 3)
    with pytest.raises(ConversionError, match=r"output 'fmap' has shape \[6, 7, 5, 3\]"):
        _layouts_to_restore({"fmap": nchw}, {"fmap": wrong})


def test_values_off_by_more_than_the_tolerance_are_not_restored():
    """Same shape, other values: not a layout to fix (the error check then fails the target)."""
    nchw = rng.normal(size=(6, 8, 8, 8)).astype(np.float32)
    assert _layouts_to_restore({"fmap": nchw}, {"fmap": nchw[::-1].copy()}) == set()


@pytest.mark.parametrize(
    ("onnx", "tflite"),
    [("input.1", "input_1"), ("images:0", "images"), ("/model/x", "model_x"), ("Image", "image")],
)
def test_input_names_match_as_tensorflow_sanitises_them(onnx, tflite):
    assert _sanitised(onnx) == _sanitised(tflite)
