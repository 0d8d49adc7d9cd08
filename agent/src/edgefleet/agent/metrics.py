"""Per-model-version request counts and latency distributions in bounded memory.

Latencies go into a base-2 exponential histogram at scale 5 (OpenTelemetry's layout, see
:mod:`edgefleet.shared.histogram`): one fixed array of 1,065 buckets from 1 us to the wire's
maximum latency, so memory is fixed whatever the request rate, percentiles are within 1.1 %, and
the histogram travels in telemetry to be merged exactly with other devices' and windows'. A
request is counted once, into one running total per version; the telemetry window and the
figures since a version was swapped in are differences between that total and a mark taken when
each began, so the serving path pays for one histogram update, not one per view.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from edgefleet.agent import measured
from edgefleet.shared.histogram import SCALE, ZERO_THRESHOLD_MS, Histogram, index_range
from edgefleet.shared.messages import LatencyHistogram as WireHistogram
from edgefleet.shared.messages import LatencySummary, ModelStats

_MIN_INDEX, _MAX_INDEX = index_range(SCALE)
# position 0 is the zero bucket; position p >= 1 is bucket index _MIN_INDEX + p - 1
_BUCKETS = _MAX_INDEX - _MIN_INDEX + 2
_LAST = _BUCKETS - 1
# position = ceil(log2(ms) * 2**SCALE) - _MIN_INDEX, as one multiply-add on log(ms)
_K = 2.0**SCALE / math.log(2.0)
_C = 1.0 - _MIN_INDEX
_log = math.log

VersionKey = tuple[str, str]


def bucket_of(ms: float) -> int:
    """The histogram position of a latency in milliseconds (0: the zero bucket)."""
    if ms <= ZERO_THRESHOLD_MS:
        return 0
    scaled = _log(ms) * _K + _C
    position = int(scaled)
    if position == scaled:  # on a bucket's upper edge, which the bucket holds
        position -= 1
    return position if position < _LAST else _LAST


def histogram_of(
    counts: Sequence[int], total_ms: float, low_ms: float | None, high_ms: float | None
) -> Histogram:
    """The shared histogram of the agent's fixed bucket array."""
    used = {_MIN_INDEX + p - 1: n for p, n in enumerate(counts) if p and n}
    return Histogram.from_buckets(
        used, scale=SCALE, zero_count=counts[0], total=total_ms, low=low_ms, high=high_ms
    )


class LatencyHistogram:
    """Counts of latencies in exponential buckets; fixed memory, mergeable, 1.1 % accurate."""

    __slots__ = ("count", "counts", "max_ms", "min_ms", "sum_ms")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
        self.min_ms = math.inf

    def record(self, ms: float) -> None:
        self.record_at(bucket_of(ms), ms)

    def record_at(self, index: int, ms: float) -> None:
        """Record ``ms`` whose bucket is already known (one log per request, not per view)."""
        self.counts[index] += 1
        self.count += 1
        self.sum_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        if ms < self.min_ms:
            self.min_ms = ms

    def histogram(self) -> Histogram:
        if self.count == 0:
            return Histogram(SCALE)
        return histogram_of(self.counts, self.sum_ms, self.min_ms, self.max_ms)

    def percentile(self, q: float) -> float:
        """The latency (ms) below which a fraction ``q`` of the recorded ones fall; 0 if empty."""
        value = self.histogram().percentile(q)
        return 0.0 if value is None else value

    def wire(self) -> WireHistogram | None:
        """The histogram as telemetry carries it (bounded to the wire's ranges)."""
        if self.count == 0:
            return None
        histogram = self.histogram()
        histogram.sum = measured.latency_sum_ms(histogram.sum)
        histogram.min = measured.latency_ms(self.min_ms)
        histogram.max = measured.latency_ms(self.max_ms)
        return WireHistogram.model_validate(histogram.wire_fields())

    def summary(self) -> LatencySummary | None:
        if self.count == 0:
            return None
        histogram = self.histogram()
        return LatencySummary(
            p50=measured.latency_ms(histogram.percentile(0.50) or 0.0),
            p95=measured.latency_ms(histogram.percentile(0.95) or 0.0),
            p99=measured.latency_ms(histogram.percentile(0.99) or 0.0),
            max=measured.latency_ms(self.max_ms),
        )


@dataclass
class VersionStats:
    """Requests of one model version over some span."""

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


_ZEROS: tuple[int, ...] = (0,) * _BUCKETS


class _Mark(NamedTuple):
    """A version's running totals at one moment."""

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    counts: Sequence[int] = _ZEROS
    sum_ms: float = 0.0


class _Totals:
    """One version's running totals since the agent started, and where each view began."""

    __slots__ = ("client_errors", "counts", "errors", "load_mark", "load_max", "load_min",
                 "requests", "sum_ms", "window_mark", "window_max", "window_min")  # fmt: skip

    def __init__(self) -> None:
        self.requests = self.errors = self.client_errors = 0
        self.counts = [0] * _BUCKETS
        self.sum_ms = 0.0
        self.window_max = self.load_max = 0.0
        self.window_min = self.load_min = math.inf
        self.window_mark = self.load_mark = _Mark()

    def mark(self) -> _Mark:
        return _Mark(self.requests, self.errors, self.client_errors, list(self.counts), self.sum_ms)

    def record(self, index: int, ms: float) -> None:
        self.requests += 1
        self.counts[index] += 1
        self.sum_ms += ms
        if ms > self.window_max:
            self.window_max = ms
        if ms > self.load_max:
            self.load_max = ms
        if ms < self.window_min:
            self.window_min = ms
        if ms < self.load_min:
            self.load_min = ms


def _since(now: _Mark, then: _Mark, min_ms: float, max_ms: float) -> VersionStats:
    """The figures between two marks of one version."""
    stats = VersionStats(
        now.requests - then.requests,
        now.errors - then.errors,
        now.client_errors - then.client_errors,
    )
    histogram = stats.latency
    histogram.counts = list(map(operator.sub, now.counts, then.counts))
    histogram.count = stats.requests  # every request (ok or error) recorded its latency
    histogram.sum_ms = max(0.0, now.sum_ms - then.sum_ms)
    histogram.min_ms, histogram.max_ms = min_ms, max_ms
    return stats


class MetricsRegistry:
    """Every request's outcome, per model version, for telemetry windows and health watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[VersionKey, _Totals] = {}

    def _add(self, key: VersionKey) -> _Totals:
        totals = self._totals[key] = _Totals()
        return totals

    def record_ok(self, key: VersionKey, ms: float) -> None:
        # bucket_of, inlined: this runs once per request
        if ms > ZERO_THRESHOLD_MS:
            scaled = _log(ms) * _K + _C
            index = int(scaled)
            if index == scaled:
                index -= 1
            if index > _LAST:
                index = _LAST
        else:
            index = 0
        lock = self._lock
        lock.acquire()  # not ``with``: half the cost, once per request
        try:
            (self._totals.get(key) or self._add(key)).record(index, ms)
        finally:
            lock.release()

    def record_error(self, key: VersionKey, ms: float) -> None:
        index = bucket_of(ms)
        with self._lock:
            totals = self._totals.get(key) or self._add(key)
            totals.errors += 1
            totals.record(index, ms)

    def record_client_error(self, key: VersionKey) -> None:
        with self._lock:
            totals = self._totals.get(key) or self._add(key)
            totals.client_errors += 1

    def reset_version(self, key: VersionKey) -> None:
        """Start a version's since-load figures afresh (it was just swapped in)."""
        with self._lock:
            totals = self._totals.get(key) or self._add(key)
            totals.load_mark, totals.load_min, totals.load_max = totals.mark(), math.inf, 0.0

    def since_load(self, key: VersionKey) -> VersionStats:
        """A copy of a version's figures since it was (last) swapped in."""
        with self._lock:
            totals = self._totals.get(key)
            if totals is None:
                return VersionStats()
            now, then = totals.mark(), totals.load_mark
            low, high = totals.load_min, totals.load_max
        return _since(now, then, low, high)

    def take_window(self, seconds: float) -> list[ModelStats]:
        """Per-version figures since the last call, and start a new window."""
        taken: list[tuple[VersionKey, _Mark, _Mark, float, float]] = []
        with self._lock:
            for key, totals in self._totals.items():
                then = totals.window_mark
                if (totals.requests, totals.client_errors) == (then.requests, then.client_errors):
                    continue  # nothing in this window
                now = totals.mark()
                taken.append((key, now, then, totals.window_min, totals.window_max))
                totals.window_mark, totals.window_min, totals.window_max = now, math.inf, 0.0
        result = []
        for (model_id, version), now, then, low, high in taken:
            stats = _since(now, then, low, high)
            result.append(
                ModelStats(
                    model_id=model_id,
                    version=version,
                    requests=stats.requests,
                    errors=stats.errors,
                    client_errors=stats.client_errors,
                    latency_ms=stats.latency.summary(),
                    throughput_rps=measured.throughput(
                        stats.requests / seconds if seconds > 0 else 0.0
                    ),
                    latency_hist=stats.latency.wire(),
                )
            )
        return result
