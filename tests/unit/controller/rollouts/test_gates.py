import pytest

from edgefleet.controller.rollouts.gates import (
    GatePolicy,
    LatencyWindow,
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


POLICY = GatePolicy(
    max_failures="0", max_error_rate=0.01, max_p95_regression=0.2, min_requests=20,
    min_p95_regression_ms=0.5,
)  # fmt: skip
BASE = VersionFigures.of_p95(requests=1000, errors=0, p95_ms=2.0)


def test_healthy_wave_passes_with_figures():
    result = evaluate_gates(
        POLICY, failed=0, devices=3, new=VersionFigures.of_p95(500, 1, 2.2), baseline=BASE
    )
    assert result.passed
    names = {c.name: c for c in result.checks}
    assert names["p95_regression"].value == pytest.approx(0.1)
    assert names["error_rate"].value == pytest.approx(0.002)


def test_p95_regression_breaches_and_says_why():
    result = evaluate_gates(
        POLICY, failed=0, devices=3, new=VersionFigures.of_p95(500, 0, 3.0), baseline=BASE
    )
    assert not result.passed
    (breach,) = result.breaches
    assert breach.name == "p95_regression"
    assert "+50%" in result.summary()
    assert "3.000 ms vs 2.000 ms" in result.summary()


def test_error_rate_breach():
    result = evaluate_gates(
        POLICY, failed=0, devices=3, new=VersionFigures.of_p95(100, 5, 2.0), baseline=BASE
    )
    assert [c.name for c in result.breaches] == ["error_rate"]


def test_failed_devices_breach():
    result = evaluate_gates(
        POLICY, failed=1, devices=1, new=VersionFigures.of_p95(0, 0, None), baseline=None
    )
    assert [c.name for c in result.breaches] == ["failures"]


def test_latency_is_not_judged_on_too_little_traffic_and_says_so():
    result = evaluate_gates(
        POLICY, failed=0, devices=1, new=VersionFigures.of_p95(5, 0, 50.0), baseline=BASE
    )
    assert result.passed
    (check,) = [c for c in result.checks if c.name == "p95_regression"]
    assert check.passed
    assert check.value is None
    assert (
        check.detail == "p95 not judged: 5 new and 1000 previous requests, 20 needed on each side"
    )
    assert (check.figures["new_requests"], check.figures["previous_requests"]) == (5, 1000)


def test_combine_weights_v1_p95s_by_requests_and_marks_them_approximate():
    figures = combine_figures(
        [LatencyWindow(100, 1, 1.0), LatencyWindow(300, 2, 3.0), LatencyWindow(0, 0, None)]
    )
    assert (figures.requests, figures.errors, figures.latency_requests) == (400, 3, 400)
    assert figures.p95_ms == pytest.approx(2.5)
    assert not figures.latency.exact
