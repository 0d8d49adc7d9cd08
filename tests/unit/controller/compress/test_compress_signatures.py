"""Every artifact presents its source's signature: names, output order, shapes, dtypes (int8 at
a full-integer file's boundary only)."""

from __future__ import annotations

import pytest

from edgefleet.controller.compress.signatures import require_same_signature, shape_text
from edgefleet.controller.errors import SignatureMismatchError
from edgefleet.shared.manifest import IOSignature, TensorSpec


def _sig(
    inputs: list[tuple[str, str, tuple[int | None, ...]]],
    outputs: list[tuple[str, str, tuple[int | None, ...]]],
) -> IOSignature:
    def specs(items: list[tuple[str, str, tuple[int | None, ...]]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name=n, dtype=d, shape=s) for n, d, s in items)

    return IOSignature(inputs=specs(inputs), outputs=specs(outputs))


SOURCE = _sig(
    [("image", "float32", (None, 16, 16, 1)), ("ids", "int64", (None, 4))],
    [("logits", "float32", (None, 4)), ("box", "float32", (None, 4))],
)


def test_the_same_signature_passes_inputs_in_any_order():
    reordered = _sig(
        [("ids", "int64", (None, 4)), ("image", "float32", (None, 16, 16, 1))],
        [("logits", "float32", (None, 4)), ("box", "float32", (None, 4))],
    )
    require_same_signature("onnx-fp32", SOURCE, reordered)


def test_a_full_integer_file_may_hold_int8_where_the_source_has_floats():
    quantized = _sig(
        [("image", "int8", (None, 16, 16, 1)), ("ids", "int64", (None, 4))],
        [("logits", "int8", (None, 4)), ("box", "uint8", (None, 4))],
    )
    require_same_signature("tflite-full-int8", SOURCE, quantized)
    with pytest.raises(SignatureMismatchError, match="input 'image': dtype int8, not float32"):
        require_same_signature("tflite-int8", SOURCE, quantized)


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        (
            _sig(
                [
                    ("serving_default_image:0", "float32", (None, 16, 16, 1)),
                    ("ids", "int64", (None, 4)),
                ],
                [("logits", "float32", (None, 4)), ("box", "float32", (None, 4))],
            ),
            "inputs ['ids', 'serving_default_image:0'], not ['ids', 'image']",
        ),
        (
            _sig(
                [("image", "float32", (None, 1, 16, 16)), ("ids", "int64", (None, 4))],
                [("logits", "float32", (None, 4)), ("box", "float32", (None, 4))],
            ),
            "input 'image': shape [N, 1, 16, 16], not [N, 16, 16, 1]",
        ),
        (
            _sig(
                [("image", "float32", (1, 16, 16, 1)), ("ids", "int64", (None, 4))],
                [("logits", "float32", (None, 4)), ("box", "float32", (None, 4))],
            ),
            "input 'image': shape [1, 16, 16, 1], not [N, 16, 16, 1]",
        ),
        (
            _sig(
                [("image", "float32", (None, 16, 16, 1)), ("ids", "int32", (None, 4))],
                [("logits", "float32", (None, 4)), ("box", "float32", (None, 4))],
            ),
            "input 'ids': dtype int32, not int64",
        ),
        (
            _sig(
                [("image", "float32", (None, 16, 16, 1)), ("ids", "int64", (None, 4))],
                [("box", "float32", (None, 4)), ("logits", "float32", (None, 4))],
            ),
            "outputs ['box', 'logits'], not ['logits', 'box'] (names and order must agree)",
        ),
        (
            _sig(
                [("image", "float32", (None, 16, 16, 1)), ("ids", "int64", (None, 4))],
                [("Identity", "float32", (None, 4)), ("Identity_1", "float32", (None, 4))],
            ),
            "outputs ['Identity', 'Identity_1'], not ['logits', 'box'] (names and order must "
            "agree)",
        ),
        (
            _sig(
                [("image", "float32", (None, 16, 16, 1)), ("ids", "int64", (None, 4))],
                [("logits", "float32", (None, 4)), ("box", "float16", (None, 4))],
            ),
            "output 'box': dtype float16, not float32",
        ),
    ],
)
def test_a_difference_is_refused_naming_the_tensor(artifact, reason):
    with pytest.raises(SignatureMismatchError) as raised:
        require_same_signature("tflite-fp32", SOURCE, artifact)
    assert str(raised.value) == f"tflite-fp32 does not match the source: {reason}"


def test_shape_text_marks_dynamic_dimensions():
    assert shape_text((None, 3, 224, 224)) == "[N, 3, 224, 224]"
    assert shape_text(()) == "[]"
