"""edgefleet.agent.validation on real runtimes: golden pairs, NaN/Inf, latency budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.errors import ValidationFailedError
from edgefleet.agent.runtimes import load_runtime
from edgefleet.shared import GoldenPair, GoldenSet
from support.agent_harness import manifest_for
from support.publisher import tensor


def golden(model, inputs, outputs=None, **kwargs) -> GoldenSet:
    outputs = outputs or [model.reference(i) for i in inputs]
    pairs = tuple(
        GoldenPair(
            inputs={k: tensor(v) for k, v in i.items()},
            outputs={k: tensor(v) for k, v in o.items()},
        )
        for i, o in zip(inputs, outputs, strict=True)
    )
    return GoldenSet(pairs=pairs, **kwargs)


X = [{"x": np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32)} for i in range(3)]


def run(model, golden_set, budget=1000.0):
    from edgefleet.agent.validation import validate

    manifest = manifest_for(model, golden_set, budget)
    runtime = load_runtime(model.path, manifest)
    try:
        return validate(runtime, manifest, warmup_runs=1, timed_runs=3)
    finally:
        runtime.close()


def test_passes_and_reports_figures(unit_models):
    report = run(unit_models.a, golden(unit_models.a, X))
    assert report.pairs == 3
    assert report.max_abs_error < 1e-5
    assert report.warm_latency_ms > 0


def test_allclose_mismatch(unit_models):
    other = [unit_models.b.reference(i) for i in X]
    with pytest.raises(ValidationFailedError, match="golden output mismatch") as info:
        run(unit_models.a, golden(unit_models.a, X, other))
    assert info.value.figures["max_abs_error"] > 1e-3


def test_top1_tolerates_small_differences_but_not_wrong_classes(unit_models):
    nudged = [{"logits": unit_models.a.reference(i)["logits"] * 1.05} for i in X]
    run(unit_models.a, golden(unit_models.a, X, nudged, compare="top1"))
    flipped = [{"logits": -unit_models.a.reference(i)["logits"]} for i in X]
    with pytest.raises(ValidationFailedError, match=r"top-1 agreement 0\.000"):
        run(unit_models.a, golden(unit_models.a, X, flipped, compare="top1"))


def test_nan_outputs(unit_models):
    with pytest.raises(ValidationFailedError, match="NaN/Inf"):
        run(unit_models.nan, None)


def test_latency_budget(unit_models):
    with pytest.raises(ValidationFailedError, match="exceeds the budget") as info:
        run(unit_models.a, None, budget=1e-9)
    assert info.value.figures["latency_budget_ms"] == 1e-9


def test_int8_tflite_golden_with_quantization(unit_models):
    inputs = [{"x": np.array([[0.1, 0.2, -0.3, 1.0]], np.float32)}]
    report = run(unit_models.int8, golden(unit_models.int8, inputs, atol=0.11, rtol=0.0))
    assert report.max_abs_error <= 0.11
