"""edgefleet.agent.metrics: percentiles in bounded memory, per version, per window."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.metrics import LatencyHistogram, MetricsRegistry, bucket_of
from edgefleet.shared.bounds import MAX_LATENCY_MS
from edgefleet.shared.histogram import SCALE, Histogram, index_of, index_range, lower_bound


def test_percentiles_within_two_percent_of_exact():
    samples = np.random.default_rng(0).lognormal(mean=0.0, sigma=1.0, size=20_000)
    histogram = LatencyHistogram()
    for value in samples:
        histogram.record(float(value))
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(samples, q))
        assert abs(histogram.percentile(q) - exact) / exact < 0.02
    assert histogram.max_ms == float(samples.max())


def test_memory_does_not_grow_with_requests():
    histogram = LatencyHistogram()
    size = len(histogram.counts)
    for i in range(100_000):
        histogram.record((i % 1000) * 0.01)
    assert len(histogram.counts) == size
    assert histogram.count == 100_000


def test_extremes_and_empty():
    histogram = LatencyHistogram()
    assert histogram.summary() is None
    assert histogram.percentile(0.5) == 0.0
    histogram.record(0.0)
    histogram.record(1e9)  # beyond the wire's maximum latency: counted in the last bucket
    assert histogram.percentile(0.5) == 0.0
    assert histogram.percentile(1.0) >= MAX_LATENCY_MS
    summary, wire = histogram.summary(), histogram.wire()
    assert summary is not None
    assert wire is not None
    assert summary.max == wire.max == MAX_LATENCY_MS  # clamped into the wire's bounds
    assert (wire.zero_count, wire.counts, wire.count) == (1, (1,), 2)


def test_windows_per_version_and_since_load():
    registry = MetricsRegistry()
    a, b = ("m", "1"), ("m", "2")
    for _ in range(10):
        registry.record_ok(a, 1.0)
    registry.record_error(a, 2.0)
    registry.record_client_error(a)
    registry.record_ok(b, 5.0)
    window = {s.version: s for s in registry.take_window(2.0)}
    assert window["1"].requests == 11
    assert window["1"].errors == 1
    assert window["1"].client_errors == 1
    assert window["1"].throughput_rps == 5.5
    assert window["2"].latency_ms is not None
    assert window["2"].latency_ms.max == 5.0
    assert registry.take_window(1.0) == []  # a new window starts empty
    assert registry.since_load(a).requests == 11  # the health view is not reset by telemetry
    registry.reset_version(a)
    assert registry.since_load(a).requests == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.002, max_value=50_000.0), min_size=1, max_size=500))
def test_any_sample_percentiles_are_within_bucket_precision(values):
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99, 1.0):
        exact = ordered[max(1, math.ceil(q * len(ordered))) - 1]  # nearest-rank percentile
        assert abs(histogram.percentile(q) - exact) <= exact * 0.021


def test_window_and_since_load_are_separate_views_of_one_count():
    registry = MetricsRegistry()
    key = ("m", "1")
    for _ in range(3):
        registry.record_ok(key, 1.0)
    (first,) = registry.take_window(1.0)
    assert (first.requests, first.latency_ms.max) == (3, 1.0)
    registry.record_ok(key, 10.0)
    registry.record_error(key, 20.0)
    (second,) = registry.take_window(1.0)
    assert (second.requests, second.errors, second.latency_ms.max) == (2, 1, 20.0)
    total = registry.since_load(key)
    assert (total.requests, total.errors, total.latency.count, total.latency.max_ms) == (
        5,
        1,
        5,
        20.0,
    )
    assert abs(total.latency.percentile(0.5) - 1.0) < 0.02
    registry.reset_version(key)  # swapped in again: the health view starts afresh
    registry.record_ok(key, 2.0)
    fresh = registry.since_load(key)
    assert (fresh.requests, fresh.errors, fresh.latency.max_ms) == (1, 0, 2.0)
    assert abs(fresh.latency.percentile(0.99) - 2.0) < 0.04
    (third,) = registry.take_window(1.0)  # the window did not start afresh with it
    assert (third.requests, third.latency_ms.max) == (1, 2.0)
    assert registry.since_load(("m", "never")).requests == 0


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e6))
def test_a_latency_falls_in_the_bucket_whose_bounds_hold_it(ms):
    position = bucket_of(ms)
    assert 0 <= position < len(LatencyHistogram().counts)
    if ms > 0.001 and position < len(LatencyHistogram().counts) - 1:
        index = index_range(SCALE)[0] + position - 1
        lower, upper = lower_bound(index, SCALE), lower_bound(index + 1, SCALE)
        assert lower * (1 - 1e-9) <= ms <= upper * (1 + 1e-9)
        assert abs(index - index_of(ms)) <= 1  # the shared bucketing, exact at the edges
    registry, histogram = MetricsRegistry(), LatencyHistogram()
    registry.record_ok(("m", "1"), ms)  # its own, inlined, bucketing agrees
    histogram.record(ms)
    assert registry.since_load(("m", "1")).latency.counts == histogram.counts


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=1, max_size=300))
def test_the_wire_histogram_is_the_shared_histogram_of_the_same_values(values):
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    wire = histogram.wire()
    assert wire is not None
    assert wire.count == len(values)
    shared = Histogram.of_values(min(v, MAX_LATENCY_MS) for v in values)
    for q in (0.5, 0.9, 0.99, 1.0):
        ours, theirs = Histogram.of(wire).percentile(q), shared.percentile(q)
        assert ours is not None
        assert theirs is not None
        assert abs(ours - theirs) <= 0.023 * max(theirs, 0.001)  # at most one bucket apart
