"""edgefleet.shared.histogram: exact merges, percentiles within the stated error, and the wire
model's refusal of histograms whose fields contradict each other."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.shared.bounds import MAX_HISTOGRAM_BUCKETS, MAX_LATENCY_MS
from edgefleet.shared.histogram import (
    SCALE,
    ZERO_THRESHOLD_MS,
    Histogram,
    index_of,
    index_range,
    le_edges,
    lower_bound,
    relative_error,
)
from edgefleet.shared.messages import LatencyHistogram

latencies = st.floats(min_value=0.0, max_value=MAX_LATENCY_MS, allow_nan=False)
positive = st.floats(min_value=ZERO_THRESHOLD_MS * 1.001, max_value=MAX_LATENCY_MS)


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def same_buckets(a: Histogram, b: Histogram) -> bool:
    return a.wire_fields() | {"sum": 0} == b.wire_fields() | {"sum": 0} and math.isclose(
        a.sum, b.sum, rel_tol=1e-9, abs_tol=1e-9
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=400), st.data())
def test_merging_any_split_gives_the_histogram_of_the_whole(values, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=6)))
    parts = [values[i:j] for i, j in zip([0, *cuts], [*cuts, len(values)], strict=True)]
    merged = Histogram()
    for part in parts:
        merged.merge(Histogram.of_values(part))
    assert same_buckets(merged, Histogram.of_values(values))


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=300), st.integers(0, 5), st.integers(0, 5))
def test_merging_across_scales_equals_downscaling_the_whole(values, drop_a, drop_b):
    half = len(values) // 2
    a = Histogram.of_values(values[:half], SCALE - drop_a)
    b = Histogram.of_values(values[half:], SCALE - drop_b)
    a.merge(b)
    whole = Histogram.of_values(values).downscaled(SCALE - max(drop_a, drop_b))
    assert a.scale == whole.scale
    assert same_buckets(a, whole)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(positive, min_size=1, max_size=500),
    st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]),
    st.integers(0, 6),
)
def test_percentiles_are_within_the_stated_relative_error(values, q, drop):
    scale = SCALE - drop
    split = len(values) // 3
    merged = Histogram.of_values(values[:split], scale)
    merged.merge(Histogram.of_values(values[split:], scale))
    estimate = merged.percentile(q)
    exact = exact_percentile(values, q)
    assert estimate is not None
    assert abs(estimate - exact) <= relative_error(scale) * exact * (1 + 1e-9)


def test_the_agent_scale_meets_two_percent():
    assert relative_error(SCALE) < 0.011
    assert relative_error(SCALE - 1) > 0.02  # why the agent does not use a coarser scale


@settings(max_examples=300, deadline=None)
@given(positive, st.integers(-3, 8))
def test_a_value_lies_in_its_bucket(value, scale):
    index = index_of(value, scale)
    assert lower_bound(index, scale) < value <= lower_bound(index + 1, scale)


def test_bucket_edges_belong_to_the_lower_bucket():
    # (b**i, b**(i+1)]: a power of two is the upper edge of its bucket, like Prometheus's le
    assert index_of(1.0) == -1
    assert index_of(2.0) == 2**SCALE - 1
    assert index_of(math.nextafter(2.0, 3.0)) == 2**SCALE


def test_cumulative_counts_at_classic_edges_are_exact():
    values = [0.0005, 0.01, 0.02, 0.5, 1.0, 1.0, 3.0, 250.0, 9000.0]
    histogram = Histogram.of_values(values)
    edges = le_edges()
    assert edges[0] == 2.0**-7
    assert edges[-1] == 2.0**14
    counts = histogram.cumulative(edges)
    assert counts == [sum(v <= edge for v in values) for edge in edges]


def test_wire_round_trip_and_bounded_buckets():
    values = [0.003 * 1.7**k for k in range(40)]
    histogram = Histogram.of_values(values)
    wire = LatencyHistogram.model_validate(histogram.wire_fields())
    back = Histogram.of(wire)
    assert same_buckets(back, histogram)
    coarse = LatencyHistogram.model_validate(histogram.wire_fields(max_buckets=50))
    assert len(coarse.counts) <= 50
    assert coarse.count == len(values)
    low, high = index_range(SCALE)
    assert high - low + 1 <= MAX_HISTOGRAM_BUCKETS  # every latency fits at the agent's scale


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scale": 5, "counts": (1, 2), "offset": 0, "count": 4, "sum": 1.0}, "not the sum"),
        ({"scale": 5, "counts": (1,), "offset": 2**20, "count": 1, "sum": 1.0}, "lie outside"),
        ({"scale": 5, "counts": (1,), "offset": -400, "count": 1, "sum": 1.0}, "lie outside"),
        ({"scale": 21, "count": 0, "sum": 0.0}, "less than or equal to 20"),
        ({"scale": 5, "count": 0, "sum": 3.0}, "empty histogram"),
        ({"scale": 5, "zero_count": 1, "count": 1, "sum": 0, "min": 2.0, "max": 1.0}, "exceeds"),
        ({"scale": 5, "zero_count": -1, "count": -1, "sum": 0.0}, "greater than or equal"),
        ({"scale": 5, "counts": (1,), "count": 1, "sum": math.inf}, "finite"),
        ({"scale": 5, "counts": (0,) * 1101, "count": 0, "sum": 0.0}, "at most 1100"),
    ],
)
def test_contradictory_histograms_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        LatencyHistogram.model_validate(fields)


def test_empty_histograms():
    empty = Histogram()
    assert empty.percentile(0.5) is None
    assert empty.wire_fields()["counts"] == ()
    only_zeros = Histogram.of_values([0.0, 0.0005])
    assert only_zeros.percentile(0.99) == 0.0
