"""edgefleet.agent.health: keep or roll back after a swap."""

from __future__ import annotations

from edgefleet.agent.health import HealthWatch, RollbackVerdict
from edgefleet.agent.metrics import VersionStats
from edgefleet.shared import HealthPolicy


def stats(requests: int, errors: int, latency_ms: float) -> VersionStats:
    s = VersionStats(requests=requests, errors=errors)
    for _ in range(requests):
        s.latency.record(latency_ms)
    return s


POLICY = HealthPolicy(window_s=10, min_requests=20, max_error_rate=0.1, max_p95_regression=0.5)


def watch(baseline: VersionStats) -> HealthWatch:
    return HealthWatch(
        new=("m", "2"), previous=("m", "1"), policy=POLICY, baseline=baseline, started=100.0
    )


def test_error_rate_rolls_back_early():
    verdict = watch(stats(100, 0, 1.0)).check(stats(20, 5, 1.0), now=101.0)
    assert isinstance(verdict, RollbackVerdict)
    assert verdict.figures["error_rate"] == 0.25


def test_too_few_requests_wait():
    assert watch(stats(100, 0, 1.0)).check(stats(19, 19, 1.0), now=101.0) is False


def test_error_rate_no_worse_than_before_is_kept():
    assert watch(stats(100, 30, 1.0)).check(stats(40, 12, 1.0), now=111.0) is True


def test_p95_regression_rolls_back_at_window_end():
    w = watch(stats(100, 0, 1.0))
    assert w.check(stats(50, 0, 2.5), now=105.0) is False
    verdict = w.check(stats(50, 0, 2.5), now=110.0)
    assert isinstance(verdict, RollbackVerdict)
    assert "p95" in verdict.reason
    assert "50 requests" in verdict.reason
    assert verdict.figures["previous_requests"] == 100
    assert w.check(stats(50, 0, 1.4), now=110.0) is True  # within +50 %


def test_a_tiny_absolute_increase_is_no_regression():
    # 0.107 -> 0.208 ms is +94 %, but a tenth of a millisecond: not worth a rollback
    w = watch(stats(21, 0, 0.107))
    assert w.check(stats(21, 0, 0.208), now=110.0) is True
    strict = HealthWatch(
        new=("m", "2"), previous=("m", "1"), started=100.0, baseline=stats(21, 0, 0.107),
        policy=POLICY.model_copy(update={"min_p95_regression_ms": 0.05}),
    )  # fmt: skip
    assert isinstance(strict.check(stats(21, 0, 0.208), now=110.0), RollbackVerdict)


def test_no_baseline_means_no_latency_verdict():
    assert watch(stats(0, 0, 1.0)).check(stats(50, 0, 100.0), now=200.0) is True
