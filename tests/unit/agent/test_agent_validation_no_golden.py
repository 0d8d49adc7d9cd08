"""edgefleet.agent.validation for a manifest without golden pairs (an ``edgetpu`` artifact whose
CPU twin was not given at import): zero inputs of the signed shapes run, and every signed
output must come out with its signed dtype, a shape that fits and finite values. Real runtimes.
"""

from __future__ import annotations

import pytest

from edgefleet.agent.errors import ValidationFailedError
from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.validation import validate
from edgefleet.shared.manifest import IOSignature, Manifest, TensorSpec
from support.agent_harness import manifest_for


def _validate(model, manifest: Manifest | None = None):
    """Load with the model's own manifest; validate against ``manifest`` (default the same)."""
    own = manifest_for(model, None)
    runtime = load_runtime(model.path, own)
    try:
        return validate(runtime, manifest or own, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()


def _with_outputs(model, *outputs: TensorSpec) -> Manifest:
    signature = IOSignature(inputs=model.signature.inputs, outputs=outputs)
    return manifest_for(model, None).model_copy(update={"signature": signature})


def test_outputs_of_the_signed_dtype_and_shape_pass(unit_models):
    report = _validate(unit_models.a)  # logits float32 [N, 3]: N is dynamic
    assert report.pairs == 0
    assert report.figures()["golden_pairs"] == 0.0


def test_native_int8_outputs_pass_when_the_signature_says_int8(unit_models):
    model = unit_models.int8
    native = IOSignature(
        inputs=(TensorSpec(name="x", dtype="int8", shape=(1, 4)),),
        outputs=(TensorSpec(name="logits", dtype="int8", shape=(1, 3)),),
    )
    manifest = manifest_for(model, None).model_copy(update={"signature": native})
    runtime = load_runtime(model.path, manifest)
    try:
        report = validate(runtime, manifest, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()
    assert report.pairs == 0


def test_an_output_of_another_dtype_is_refused(unit_models):
    manifest = _with_outputs(
        unit_models.a, TensorSpec(name="logits", dtype="float16", shape=(None, 3))
    )
    with pytest.raises(ValidationFailedError, match=r"'logits' is float32 \[1, 3\], the signed"):
        _validate(unit_models.a, manifest)


def test_an_output_of_another_shape_is_refused(unit_models):
    manifest = _with_outputs(
        unit_models.a, TensorSpec(name="logits", dtype="float32", shape=(None, 4))
    )
    with pytest.raises(ValidationFailedError, match=r"signature says float32 \['N', 4\]"):
        _validate(unit_models.a, manifest)
    manifest = _with_outputs(unit_models.a, TensorSpec(name="logits", dtype="float32", shape=(3,)))
    with pytest.raises(ValidationFailedError, match="logits"):
        _validate(unit_models.a, manifest)


def test_a_signed_output_that_is_not_produced_is_refused(unit_models):
    manifest = _with_outputs(
        unit_models.a,
        TensorSpec(name="logits", dtype="float32", shape=(None, 3)),
        TensorSpec(name="scores", dtype="float32", shape=(None, 3)),
    )
    with pytest.raises(ValidationFailedError, match="'scores' of the signed signature was not"):
        _validate(unit_models.a, manifest)


def test_non_finite_outputs_are_still_refused(unit_models):
    with pytest.raises(ValidationFailedError, match="NaN/Inf"):
        _validate(unit_models.nan)
