"""telemetry.latency: the controller's merge of many windows' histograms gives the histogram of
all their latencies, and v1 summaries beside them make the figure approximate."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.controller.fleet.tables import histogram_bytes, histogram_of_bytes
from edgefleet.controller.telemetry.latency import MERGE_SCALE, MergedLatency, merge_into
from edgefleet.shared.bounds import MAX_HISTOGRAM_BUCKETS, MAX_LATENCY_MS
from edgefleet.shared.histogram import SCALE, ZERO_THRESHOLD_MS, Histogram, relative_error
from edgefleet.shared.messages import LatencyHistogram

latencies = st.floats(min_value=0.0, max_value=MAX_LATENCY_MS, allow_nan=False)


def buckets(h: Histogram) -> dict[str, object]:
    fields = h.wire_fields()
    fields.pop("sum")
    return fields


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(latencies, max_size=60), min_size=1, max_size=8),
    st.lists(st.integers(-2, 8), min_size=8, max_size=8),
)
def test_merging_windows_of_any_scales_is_the_histogram_of_all_their_latencies(parts, scales):
    windows = [Histogram.of_values(part, SCALE - drop) for part, drop in zip(parts, scales)]  # noqa: B905
    total = None
    for window in windows:
        total = merge_into(total, window)
    everything = [v for part in parts for v in part]
    coarsest = min(MERGE_SCALE, *(w.scale for w in windows))
    assert total is not None
    assert buckets(total) == buckets(Histogram.of_values(everything, coarsest))
    assert math.isclose(total.sum, sum(everything), rel_tol=1e-9, abs_tol=1e-9)
    # The same as the shared, bucket-by-bucket merge.
    reference = Histogram(coarsest)
    for window in windows:
        reference.merge(window)
    assert buckets(total) == buckets(reference)
    # The inputs are left as they were (a merge copies the first one).
    assert [w.count for w in windows] == [len(p) for p in parts]


def test_a_finer_scale_than_the_agents_is_merged_at_the_agents():
    """A device may send scale 20; merges stay at scale 5, so two of its windows far apart
    cost 1,064 buckets at most, not 35 million."""
    fast = Histogram.of_values([0.002], 20)
    slow = Histogram.of_values([1e6], 20)
    total = merge_into(merge_into(None, fast), slow)
    assert total.scale == MERGE_SCALE
    assert len(total.counts) < 1100
    assert total.percentile(1.0) == pytest.approx(1e6, rel=relative_error(MERGE_SCALE))


def test_merged_percentiles_are_within_the_stated_error_of_the_exact_ones():
    values = [0.05 * 1.003**i for i in range(3000)]
    latency = MergedLatency()
    for start in range(0, len(values), 250):
        latency.add_histogram(Histogram.of_values(values[start : start + 250]))
    ordered = sorted(values)
    for q, got in zip((0.5, 0.95, 0.99), latency.percentiles(), strict=True):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        assert got is not None
        assert abs(got - exact) <= relative_error(SCALE) * exact
    assert latency.exact
    assert latency.samples == 3000


def test_summaries_alone_are_their_request_weighted_mean_and_approximate():
    latency = MergedLatency()
    latency.add_summary(30, 5.0, 10.0, 20.0)
    latency.add_summary(10, 1.0, 2.0, None)  # a missing p99 counts as the p95
    latency.add_summary(5, None, None, None)  # no p95: says nothing
    assert latency.percentiles() == pytest.approx(((150 + 10) / 40, 320 / 40, (600 + 20) / 40))
    assert not latency.exact
    assert latency.samples == 40


def test_histograms_and_summaries_together_weigh_each_part_by_its_requests():
    latency = MergedLatency()
    latency.add_histogram(Histogram.of_values([4.0] * 300))
    latency.add_summary(100, 8.0, 8.0, 8.0)
    part = Histogram.of_values([4.0]).percentile(0.95)
    assert part is not None
    assert latency.percentile(0.95) == pytest.approx((300 * part + 100 * 8.0) / 400)
    assert not latency.exact
    other = MergedLatency()
    other.add(latency)
    other.add(latency)
    assert other.percentile(0.95) == pytest.approx(latency.percentile(0.95))
    assert (other.histogram_samples, other.summary_weight) == (600, 200)


def test_an_empty_histogram_changes_nothing():
    latency = MergedLatency()
    latency.add_histogram(Histogram())
    assert latency.histogram is None
    assert latency.percentiles() == (None, None, None)
    assert latency.exact


@settings(max_examples=100, deadline=None)
@given(
    st.lists(latencies, max_size=200),
    st.integers(-3, 8),
    st.sampled_from([1, 70_000, 5_000_000_000]),
)
def test_the_column_layout_reads_back_as_the_same_histogram(values, drop, weight):
    histogram = Histogram.of_values(values, SCALE - drop)
    histogram.counts = [n * weight for n in histogram.counts]  # every width of count
    histogram.count = histogram.zero_count + sum(histogram.counts)
    assert histogram_of_bytes(histogram_bytes(histogram)) == histogram
    sent = Histogram.of_values(values, SCALE - drop)
    while len(sent.counts) > MAX_HISTOGRAM_BUCKETS:  # as the wire bounds it
        sent = sent.downscaled(sent.scale - 1)
    wire = LatencyHistogram.model_validate(sent.wire_fields())
    assert buckets(histogram_of_bytes(histogram_bytes(wire))) == buckets(sent)


def test_a_window_of_a_hundred_buckets_is_a_few_hundred_bytes():
    histogram = Histogram.from_buckets({i: 3 for i in range(-40, 60)})
    assert len(histogram.counts) == 100
    assert len(histogram_bytes(histogram)) == 48 + 2 * 100


def test_a_column_of_an_unknown_layout_is_refused():
    data = bytearray(histogram_bytes(Histogram.of_values([1.0])))
    data[0] = 9
    with pytest.raises(ValueError, match="layout 9"):
        histogram_of_bytes(bytes(data))


def test_the_zero_bucket_merges_too():
    total = merge_into(None, Histogram.of_values([0.0, ZERO_THRESHOLD_MS, 1.0]))
    total = merge_into(total, Histogram.of_values([0.0]))
    assert (total.zero_count, total.count) == (3, 4)
    assert total.percentile(0.5) == 0.0
