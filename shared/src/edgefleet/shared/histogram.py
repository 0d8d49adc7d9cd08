"""Base-2 exponential histograms of latencies: exact merges, percentiles with a known error.

The layout is OpenTelemetry's exponential histogram (and Prometheus's native histogram): at
``scale`` s the base is ``b = 2 ** (2 ** -s)`` and bucket ``i`` holds the values in
``(b**i, b**(i + 1)]``; values of at most :data:`ZERO_THRESHOLD_MS` count in the zero bucket.
Two histograms merge by adding counts bucket by bucket, after the finer one is brought to the
coarser scale (bucket ``i`` at scale s lies in bucket ``i >> 1`` at scale s - 1), so a merge of
any split of a sample equals the histogram of the whole sample.

A percentile read from a histogram is the point of its bucket nearest, in relative terms, to
every value the bucket can hold (``2 * lo * hi / (lo + hi)``), so it is within
``(b - 1) / (b + 1)`` of the exact (nearest-rank) percentile of the values recorded: 1.1 % at
the agent's :data:`SCALE` of 5, whatever the distribution. It is also kept within the recorded
minimum and maximum.

Pure Python, no numpy: the agent, the controller and the wire validation all use it.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgefleet.shared.bounds import (
    MAX_HISTOGRAM_SCALE,
    MAX_LATENCY_MS,
    MIN_HISTOGRAM_SCALE,
)

SCALE = 5  # 32 buckets per doubling: relative error (b - 1) / (b + 1) = 1.08 %
ZERO_THRESHOLD_MS = 0.001  # 1 us: below any latency a clock resolves for a model call


def base(scale: int) -> float:
    return float(2.0 ** (2.0**-scale))


def relative_error(scale: int) -> float:
    """The largest relative error of a percentile read from a histogram at ``scale``."""
    b = base(scale)
    return (b - 1.0) / (b + 1.0)


def index_of(value: float, scale: int = SCALE) -> int:
    """The bucket of a positive ``value``: ``i`` with ``b**i < value <= b**(i + 1)``."""
    scaled = math.log2(value) * 2.0**scale
    index = math.ceil(scaled) - 1
    # log2 is exact at powers of two but may be one ulp off elsewhere: settle on the boundary
    if lower_bound(index + 1, scale) < value:
        index += 1
    elif lower_bound(index, scale) >= value:
        index -= 1
    return index


def lower_bound(index: int, scale: int) -> float:
    """The exclusive lower edge of bucket ``index`` (the inclusive upper edge of ``index - 1``)."""
    return float(2.0 ** (index * 2.0**-scale))


@functools.cache
@functools.cache  # every decoded histogram asks; scales are few
def index_range(scale: int) -> tuple[int, int]:
    """The buckets a latency the wire admits can fall in at ``scale``: above the zero
    threshold, at most the wire's maximum latency."""
    return index_of(math.nextafter(ZERO_THRESHOLD_MS, math.inf), scale), index_of(
        MAX_LATENCY_MS, scale
    )


class HistogramFields(Protocol):
    """What the wire model :class:`edgefleet.shared.messages.LatencyHistogram` carries."""

    @property
    def scale(self) -> int: ...
    @property
    def zero_count(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def counts(self) -> Sequence[int]: ...
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...
    @property
    def min(self) -> float | None: ...
    @property
    def max(self) -> float | None: ...


class HistogramLayoutError(ValueError):
    """A histogram whose fields contradict each other (a wire validation error)."""


def check_layout(h: HistogramFields) -> None:
    """Refuse a histogram whose counts do not add up, or whose buckets hold no latency the
    wire admits (which would also overflow a float when its edges are computed).

    Raises:
        HistogramLayoutError: naming the contradiction.
    """
    if not MIN_HISTOGRAM_SCALE <= h.scale <= MAX_HISTOGRAM_SCALE:
        raise HistogramLayoutError(f"scale {h.scale} outside {MIN_HISTOGRAM_SCALE}..20")
    total = h.zero_count + sum(h.counts)
    if total != h.count:
        raise HistogramLayoutError(f"count {h.count} is not the sum of the buckets ({total})")
    if h.counts:
        low, high = index_range(h.scale)
        last = h.offset + len(h.counts) - 1
        if h.offset < low or last > high:
            raise HistogramLayoutError(
                f"buckets {h.offset}..{last} at scale {h.scale} lie outside {low}..{high}, the "
                f"latencies from {ZERO_THRESHOLD_MS} ms to {MAX_LATENCY_MS:g} ms"
            )
    if h.count == 0 and (h.sum or h.min is not None or h.max is not None):
        raise HistogramLayoutError("an empty histogram has no sum, minimum or maximum")
    if h.min is not None and h.max is not None and h.min > h.max:
        raise HistogramLayoutError(f"min {h.min} exceeds max {h.max}")


@dataclass(slots=True)
class Histogram:
    """A mutable exponential histogram: record values, merge others, read percentiles.

    ``counts`` is dense from ``offset``; an empty histogram has no buckets.
    """

    scale: int = SCALE
    zero_count: int = 0
    offset: int = 0
    counts: list[int] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, h: HistogramFields) -> Histogram:
        """A mutable copy of a wire histogram (or any object with its fields)."""
        return cls(h.scale, h.zero_count, h.offset, list(h.counts), h.count, h.sum, h.min, h.max)

    @classmethod
    def of_values(cls, values: Iterable[float], scale: int = SCALE) -> Histogram:
        histogram = cls(scale)
        for value in values:
            histogram.record(value)
        return histogram

    @classmethod
    def from_buckets(
        cls,
        buckets: dict[int, int],
        *,
        scale: int = SCALE,
        zero_count: int = 0,
        total: float = 0.0,
        low: float | None = None,
        high: float | None = None,
    ) -> Histogram:
        """A histogram of sparse ``{index: count}`` buckets (zero counts are dropped)."""
        used = [i for i, n in buckets.items() if n]
        histogram = cls(scale, zero_count, sum=total, min=low, max=high)
        if used:
            histogram.offset = min(used)
            histogram.counts = [0] * (max(used) - histogram.offset + 1)
            for index in used:
                histogram.counts[index - histogram.offset] = buckets[index]
        histogram.count = zero_count + sum(histogram.counts)
        return histogram

    def record(self, value: float, n: int = 1) -> None:
        """Count ``value`` (ms) ``n`` times."""
        if value <= ZERO_THRESHOLD_MS:
            self.zero_count += n
        else:
            self._add_bucket(index_of(value, self.scale), n)
        self.count += n
        self.sum += value * n
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)

    def _add_bucket(self, index: int, n: int) -> None:
        if not self.counts:
            self.offset, self.counts = index, [n]
            return
        if index < self.offset:
            self.counts[:0] = [0] * (self.offset - index)
            self.offset = index
        elif index >= self.offset + len(self.counts):
            self.counts.extend([0] * (index - self.offset - len(self.counts) + 1))
        self.counts[index - self.offset] += n

    def _add_counts(self, offset: int, counts: Sequence[int]) -> None:
        """Add dense ``counts`` starting at bucket ``offset`` (same scale)."""
        if not counts:
            return
        if not self.counts:
            self.offset, self.counts = offset, list(counts)
            return
        if offset < self.offset:
            self.counts[:0] = [0] * (self.offset - offset)
            self.offset = offset
        missing = offset + len(counts) - (self.offset + len(self.counts))
        if missing > 0:
            self.counts.extend([0] * missing)
        start = offset - self.offset
        stop = start + len(counts)
        self.counts[start:stop] = map(operator.add, self.counts[start:stop], counts)

    def downscaled(self, scale: int) -> Histogram:
        """This histogram at a coarser (or the same) ``scale``."""
        if scale > self.scale:
            raise ValueError(f"cannot refine scale {self.scale} to {scale}")
        shift = self.scale - scale
        merged: dict[int, int] = {}
        for k, n in enumerate(self.counts):
            if n:
                index = (self.offset + k) >> shift
                merged[index] = merged.get(index, 0) + n
        return Histogram.from_buckets(
            merged, scale=scale, zero_count=self.zero_count, total=self.sum,
            low=self.min, high=self.max,
        )  # fmt: skip

    def merge(self, other: HistogramFields) -> None:
        """Add ``other``'s counts to this histogram (at the coarser of the two scales)."""
        theirs = other if isinstance(other, Histogram) else Histogram.of(other)
        if theirs.scale < self.scale:
            coarser = self.downscaled(theirs.scale)
            self.scale, self.offset, self.counts = coarser.scale, coarser.offset, coarser.counts
        elif theirs.scale > self.scale:
            theirs = theirs.downscaled(self.scale)
        self._add_counts(theirs.offset, theirs.counts)
        self.zero_count += theirs.zero_count
        self.count += theirs.count
        self.sum += theirs.sum
        if theirs.min is not None:
            self.min = theirs.min if self.min is None else min(self.min, theirs.min)
        if theirs.max is not None:
            self.max = theirs.max if self.max is None else max(self.max, theirs.max)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1, nearest rank) in ms; None when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count - 1e-9))
        seen = self.zero_count
        if seen >= rank:
            return 0.0 if self.min is None else min(self.min, ZERO_THRESHOLD_MS)
        estimate = self.max if self.max is not None else 0.0
        for k, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                lo = lower_bound(self.offset + k, self.scale)
                hi = lower_bound(self.offset + k + 1, self.scale)
                estimate = 2.0 * lo * hi / (lo + hi)
                break
        if self.min is not None:
            estimate = max(estimate, self.min)
        if self.max is not None:
            estimate = min(estimate, self.max)
        return estimate

    def cumulative(self, edges: Sequence[float]) -> list[int]:
        """Counts of values at most each edge (ascending edges, Prometheus ``le``). An edge is
        exact where it is a bucket edge of this histogram's scale (see :func:`le_edges`)."""
        result = []
        k, seen = 0, self.zero_count
        for edge in edges:
            while k < len(self.counts) and lower_bound(self.offset + k + 1, self.scale) <= edge:
                seen += self.counts[k]
                k += 1
            result.append(seen)
        return result

    def wire_fields(self, max_buckets: int | None = None) -> dict[str, object]:
        """The fields of the wire model, coarsened until at most ``max_buckets`` remain."""
        histogram = self
        while max_buckets is not None and len(histogram.counts) > max_buckets:
            histogram = histogram.downscaled(histogram.scale - 1)
        first = next((k for k, n in enumerate(histogram.counts) if n), None)
        counts = histogram.counts
        offset = histogram.offset
        if first is None:
            counts, offset = [], 0
        else:
            last = max(k for k, n in enumerate(counts) if n)
            counts, offset = counts[first : last + 1], offset + first
        return {
            "scale": histogram.scale,
            "zero_count": histogram.zero_count,
            "offset": offset,
            "counts": tuple(counts),
            "count": histogram.count,
            "sum": histogram.sum,
            "min": histogram.min,
            "max": histogram.max,
        }


def le_edges(scale: int = 0, low_ms: float = 2.0**-7, high_ms: float = 2.0**14) -> list[float]:
    """Classic histogram edges that are bucket edges of every scale >= ``scale``: powers of
    ``base(scale)`` from ``low_ms`` to ``high_ms`` (default: doublings from 7.8 us to 16 s)."""
    first = index_of(low_ms, scale) + 1
    last = index_of(high_ms, scale) + 1
    return [lower_bound(i, scale) for i in range(first, last + 1)]
