"""Pure bucketing: bucket boundaries, step choice, and how windows merge."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edgefleet.controller.telemetry.buckets import (
    LatencySample,
    SystemSample,
    bucket_latency,
    bucket_system,
    floor_to,
    nice_step,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def sample(second: int, p95: float | None, requests: int, device: str = "d") -> LatencySample:
    """A v1 agent's window: a summary, no histogram."""
    at = T0.replace(second=second)
    return LatencySample.of_window(at, device, "m", "1", requests, 1, (p95, p95, p95, p95), None)


def test_buckets_align_to_the_epoch_and_naive_times_are_utc():
    assert floor_to(datetime(2026, 11, 25, 8, 7, 59), 60) == datetime(
        2026, 11, 25, 8, 7, tzinfo=UTC
    )
    assert floor_to(T0.replace(minute=59), 3600) == T0


@pytest.mark.parametrize(
    ("span_s", "points", "minimum", "step"),
    [(3600, 300, 1, 15), (1800, 300, 1, 10), (60, 300, 1, 1), (86400, 300, 60, 300),
     (7 * 86400, 300, 3600, 3600), (400 * 86400, 300, 3600, 172800)],
)  # fmt: skip
def test_nice_step_keeps_points_under_the_limit(span_s, points, minimum, step):
    assert nice_step(span_s, points, minimum) == step
    assert span_s / step <= points or step == minimum


def test_v1_latency_merges_request_weighted_and_counts_everything():
    buckets = bucket_latency([sample(0, 10.0, 30), sample(20, 2.0, 10), sample(40, None, 5)], 60)
    ((key, acc),) = buckets.items()
    assert key == ("d", "m", "1", T0)
    assert (acc.windows, acc.requests, acc.errors) == (3, 45, 3)
    _p50, p95, _p99 = acc.percentiles()
    assert p95 == pytest.approx((10.0 * 30 + 2.0 * 10) / 40)
    assert acc.max_ms == 10.0
    assert not acc.exact  # a mean of percentiles, not a percentile


def test_latency_across_devices_merges_only_when_asked():
    samples = [sample(0, 1.0, 1, "a"), sample(0, 3.0, 1, "b")]
    assert len(bucket_latency(samples, 60)) == 2
    ((_, merged),) = bucket_latency(samples, 60, per_device=False).items()
    assert merged.percentiles()[1] == 2.0


def test_system_means_skip_missing_temperatures():
    buckets = bucket_system(
        [SystemSample(T0, "d", 1, 10.0, 100, 400, 5, None),
         SystemSample(T0.replace(second=30), "d", 3, 30.0, 200, 400, 5, 60.0)],
        60,
    )  # fmt: skip
    cpu, used, total, _rss, temperature = buckets[("d", T0)].means()
    assert cpu == 25.0
    assert used == 175.0
    assert total == 400
    assert temperature == 60.0
