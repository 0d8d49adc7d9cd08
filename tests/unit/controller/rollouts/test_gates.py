import pytest

from edgefleet.controller.rollouts.gates import (
    GatePolicy,
    VersionFigures,
    combine_figures,
    evaluate_gates,
    failures_allowed,
)


@pytest.mark.parametrize(
    ("spec", "devices", "allowed"), [("0", 10, 0), ("2", 10, 2), ("10%", 10, 1), ("25%", 3, 0)]
)
def test_failures_allowed(spec, devices, allowed):
    assert failures_allowed(spec, devices) == allowed


@pytest.mark.parametrize("spec", ["-1", "x", "150%", "1.5"])
def test_bad_failure_specs(spec):
    with pytest.raises(ValueError, match="max failures"):
        GatePolicy(max_failures=spec)


POLICY = GatePolicy(max_failures="0", max_error_rate=0.01, max_p95_regression=0.2, min_requests=20)
BASE = VersionFigures(requests=1000, errors=0, p95_ms=2.0)


def test_healthy_wave_passes_with_figures():
    result = evaluate_gates(
        POLICY, failed=0, devices=3, new=VersionFigures(500, 1, 2.2), baseline=BASE
    )
    assert result.passed
    names = {c.name: c for c in result.checks}
    assert names["p95_regression"].value == pytest.approx(0.1)
    assert names["error_rate"].value == pytest.approx(0.002)


def test_p95_regression_breaches_and_says_why():
    result = evaluate_gates(
        POLICY, failed=0, devices=3, new=VersionFigures(500, 0, 3.0), baseline=BASE
    )
    assert not result.passed
    (breach,) = result.breaches
    assert breach.name == "p95_regression"
    assert "+50%" in result.summary()
    assert "3.000 ms vs 2.000 ms" in result.summary()


def test_error_rate_breach():
    result = evaluate_gates(
        POLICY, failed=0, devices=3, new=VersionFigures(100, 5, 2.0), baseline=BASE
    )
    assert [c.name for c in result.breaches] == ["error_rate"]


def test_failed_devices_breach():
    result = evaluate_gates(
        POLICY, failed=1, devices=1, new=VersionFigures(0, 0, None), baseline=None
    )
    assert [c.name for c in result.breaches] == ["failures"]


def test_latency_is_not_judged_on_too_little_traffic():
    result = evaluate_gates(
        POLICY, failed=0, devices=1, new=VersionFigures(5, 0, 50.0), baseline=BASE
    )
    assert result.passed
    assert "p95_regression" not in {c.name for c in result.checks}


def test_combine_weights_p95_by_requests():
    figures = combine_figures([(100, 1, 1.0), (300, 2, 3.0), (0, 0, None)])
    assert figures == VersionFigures(400, 3, pytest.approx(2.5))
