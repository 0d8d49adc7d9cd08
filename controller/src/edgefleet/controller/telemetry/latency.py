"""The latency of many telemetry windows: exact merges of their histograms, and the summaries of
v1 agents, which cannot be merged, kept apart and marked approximate.

A v2 agent's window carries an exponential histogram (:mod:`edgefleet.shared.histogram`): windows
of any devices and time range merge into the histogram of all their requests, whose percentiles
are within ``relative_error(scale)`` of the exact ones. A v1 agent's window carries only
p50/p95/p99; those are combined as the request-weighted mean they always were, which is not a
percentile of anything, so a figure with any of them in it says ``exact = False``.

Pure and synchronous: rollups, series, and the rollout gates all merge through here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from edgefleet.shared.histogram import SCALE, Histogram, HistogramFields

QUANTILES = (0.50, 0.95, 0.99)
# The finest scale merges keep (the agent's): every latency the wire admits then fits in 1,064
# buckets, so a device sending a finer scale over a wide range cannot make a merge huge, and
# merging stays associative (downscaling commutes with adding counts).
MERGE_SCALE = SCALE


def merge_into(total: Histogram | None, other: HistogramFields) -> Histogram:
    """``total`` with ``other``'s counts added (a copy of ``other`` when ``total`` is None).

    The same buckets as :meth:`Histogram.merge`, at the coarsest scale of the two and
    :data:`MERGE_SCALE`, but the counts are added a slice at a time, not bucket by bucket: a
    fleet chart merges tens of thousands of windows.
    """
    scale = min(other.scale, MERGE_SCALE)
    if total is None:
        copy = Histogram.of(other)
        return copy if copy.scale == scale else copy.downscaled(scale)
    theirs: HistogramFields = other
    if scale < total.scale:
        coarser = total.downscaled(scale)
        total.scale, total.offset, total.counts = coarser.scale, coarser.offset, coarser.counts
    if other.scale > total.scale:
        theirs = Histogram.of(other).downscaled(total.scale)
    counts = theirs.counts
    if counts:
        if not total.counts:
            total.offset, total.counts = theirs.offset, list(counts)
        else:
            if theirs.offset < total.offset:
                total.counts[:0] = [0] * (total.offset - theirs.offset)
                total.offset = theirs.offset
            end = theirs.offset + len(counts) - total.offset
            if end > len(total.counts):
                total.counts.extend([0] * (end - len(total.counts)))
            start = theirs.offset - total.offset
            total.counts[start:end] = map(operator.add, total.counts[start:end], counts)
    total.zero_count += theirs.zero_count
    total.count += theirs.count
    total.sum += theirs.sum
    if theirs.min is not None:
        total.min = theirs.min if total.min is None else min(total.min, theirs.min)
    if theirs.max is not None:
        total.max = theirs.max if total.max is None else max(total.max, theirs.max)
    return total


@dataclass(slots=True)
class MergedLatency:
    """Latency of a set of windows: ``histogram``, the exact merge of every window that carried
    one; and the summary part, the request-weighted sums of the percentiles of the windows that
    carried only a summary (v1 agents), ``summary_weight`` their requests."""

    histogram: Histogram | None = None
    summary_weight: int = 0
    p50_sum: float = 0.0
    p95_sum: float = 0.0
    p99_sum: float = 0.0
    max_ms: float | None = None

    def add_histogram(self, histogram: HistogramFields) -> None:
        if histogram.count == 0:
            return
        self.histogram = merge_into(self.histogram, histogram)
        self.see_max(histogram.max)

    def add_summary(
        self, weight: int, p50: float | None, p95: float | None, p99: float | None
    ) -> None:
        """Add percentiles that stand for ``weight`` requests (a window's, or the mean of
        many); without a p95 they say nothing. A missing p99 counts as the p95, a missing p50
        as 0, as they always have."""
        if p95 is None or weight <= 0:
            return
        self.summary_weight += weight
        self.p50_sum += weight * (p50 or 0.0)
        self.p95_sum += weight * p95
        self.p99_sum += weight * (p99 if p99 is not None else p95)

    def add(self, other: MergedLatency) -> None:
        if other.histogram is not None:
            self.add_histogram(other.histogram)
        self.summary_weight += other.summary_weight
        self.p50_sum += other.p50_sum
        self.p95_sum += other.p95_sum
        self.p99_sum += other.p99_sum
        self.see_max(other.max_ms)

    def see_max(self, value: float | None) -> None:
        if value is not None:
            self.max_ms = value if self.max_ms is None else max(self.max_ms, value)

    @property
    def exact(self) -> bool:
        """Whether every percentile of this comes from merged histograms (no v1 summary)."""
        return self.summary_weight == 0

    @property
    def histogram_samples(self) -> int:
        return self.histogram.count if self.histogram is not None else 0

    @property
    def samples(self) -> int:
        """The latencies these figures stand for: the histogram's, and the summaries'."""
        return self.histogram_samples + self.summary_weight

    def summary_percentiles(self) -> tuple[float | None, float | None, float | None]:
        """The request-weighted mean p50, p95, p99 of the summary part (None without one)."""
        weight = self.summary_weight
        if not weight:
            return None, None, None
        return self.p50_sum / weight, self.p95_sum / weight, self.p99_sum / weight

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile: of the merged histogram when there is no summary part; else the
        mean of the histogram's and the summaries', weighted by their requests (approximate)."""
        exact = self.histogram.percentile(q) if self.histogram is not None else None
        if self.summary_weight == 0:
            return exact
        mean = self._summary_mean(q)
        if exact is None:
            return mean
        n = self.histogram_samples
        return (n * exact + self.summary_weight * mean) / (n + self.summary_weight)

    def _summary_mean(self, q: float) -> float:
        total = self.p50_sum if q <= 0.5 else self.p95_sum if q <= 0.95 else self.p99_sum
        return total / self.summary_weight

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        """p50, p95 and p99 (see :meth:`percentile`)."""
        p50, p95, p99 = (self.percentile(q) for q in QUANTILES)
        return p50, p95, p99
