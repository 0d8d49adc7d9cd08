"""Per-model-version request counts and latency percentiles in bounded memory.

Latencies go into a log-bucketed histogram (2 % wide buckets from 1 µs to ~100 s), so memory
is fixed whatever the request rate and percentiles are accurate to about 1 %. A request is
counted once, into one running total per version; the telemetry window and the figures since
a version was swapped in are differences between that total and a mark taken when each began,
so the serving path pays for one histogram update, not one per view.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from edgefleet.agent import measured
from edgefleet.shared.messages import LatencySummary, ModelStats

_MIN_MS = 0.001
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = int(math.log(100_000.0 / _MIN_MS) / _LOG_GROWTH) + 2
# bucket = floor(log(ms / _MIN_MS) / log(_GROWTH)) + 1, as one multiply-add on log(ms)
_SCALE = 1.0 / _LOG_GROWTH
_OFFSET = 1.0 - math.log(_MIN_MS) / _LOG_GROWTH
_LAST = _BUCKETS - 1
_log = math.log

VersionKey = tuple[str, str]


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds."""
    if ms <= _MIN_MS:
        return 0
    index = int(_log(ms) * _SCALE + _OFFSET)
    return index if index < _LAST else _LAST


class LatencyHistogram:
    """Counts of latencies in log-spaced buckets; fixed memory, mergeable, ~1 % accurate."""

    __slots__ = ("count", "counts", "max_ms")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.max_ms = 0.0

    def record(self, ms: float) -> None:
        self.record_at(bucket_of(ms), ms)

    def record_at(self, index: int, ms: float) -> None:
        """Record ``ms`` whose bucket is already known (one log per request, not per view)."""
        self.counts[index] += 1
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def percentile(self, q: float) -> float:
        """The latency (ms) below which a fraction ``q`` of the recorded ones fall; 0 if empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if index == _BUCKETS - 1:
                    return self.max_ms  # the overflow bucket has no upper edge
                # The bucket's geometric midpoint, capped by the true maximum.
                upper = _MIN_MS * _GROWTH**index
                return min(self.max_ms, upper / math.sqrt(_GROWTH)) if index else _MIN_MS
        return self.max_ms

    def summary(self) -> LatencySummary | None:
        if self.count == 0:
            return None
        return LatencySummary(
            p50=measured.latency_ms(self.percentile(0.50)),
            p95=measured.latency_ms(self.percentile(0.95)),
            p99=measured.latency_ms(self.percentile(0.99)),
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


class _Totals:
    """One version's running totals since the agent started, and where each view began."""

    __slots__ = ("client_errors", "counts", "errors", "load_mark", "load_max", "requests",
                 "window_mark", "window_max")  # fmt: skip

    def __init__(self) -> None:
        self.requests = self.errors = self.client_errors = 0
        self.counts = [0] * _BUCKETS
        self.window_max = self.load_max = 0.0
        self.window_mark = self.load_mark = _Mark()

    def mark(self) -> _Mark:
        return _Mark(self.requests, self.errors, self.client_errors, list(self.counts))


def _since(now: _Mark, then: _Mark, max_ms: float) -> VersionStats:
    """The figures between two marks of one version."""
    stats = VersionStats(
        now.requests - then.requests,
        now.errors - then.errors,
        now.client_errors - then.client_errors,
    )
    histogram = stats.latency
    histogram.counts = list(map(operator.sub, now.counts, then.counts))
    histogram.count = stats.requests  # every request (ok or error) recorded its latency
    histogram.max_ms = max_ms
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
        index = int(_log(ms) * _SCALE + _OFFSET) if ms > _MIN_MS else 0
        if index > _LAST:
            index = _LAST
        lock = self._lock
        lock.acquire()  # not ``with``: half the cost, once per request
        try:
            totals = self._totals.get(key) or self._add(key)
            totals.requests += 1
            totals.counts[index] += 1
            if ms > totals.window_max:
                totals.window_max = ms
            if ms > totals.load_max:
                totals.load_max = ms
        finally:
            lock.release()

    def record_error(self, key: VersionKey, ms: float) -> None:
        index = bucket_of(ms)
        with self._lock:
            totals = self._totals.get(key) or self._add(key)
            totals.requests += 1
            totals.errors += 1
            totals.counts[index] += 1
            totals.window_max = max(totals.window_max, ms)
            totals.load_max = max(totals.load_max, ms)

    def record_client_error(self, key: VersionKey) -> None:
        with self._lock:
            totals = self._totals.get(key) or self._add(key)
            totals.client_errors += 1

    def reset_version(self, key: VersionKey) -> None:
        """Start a version's since-load figures afresh (it was just swapped in)."""
        with self._lock:
            totals = self._totals.get(key) or self._add(key)
            totals.load_mark, totals.load_max = totals.mark(), 0.0

    def since_load(self, key: VersionKey) -> VersionStats:
        """A copy of a version's figures since it was (last) swapped in."""
        with self._lock:
            totals = self._totals.get(key)
            if totals is None:
                return VersionStats()
            now, then, max_ms = totals.mark(), totals.load_mark, totals.load_max
        return _since(now, then, max_ms)

    def take_window(self, seconds: float) -> list[ModelStats]:
        """Per-version figures since the last call, and start a new window."""
        taken: list[tuple[VersionKey, _Mark, _Mark, float]] = []
        with self._lock:
            for key, totals in self._totals.items():
                then = totals.window_mark
                if (totals.requests, totals.client_errors) == (then.requests, then.client_errors):
                    continue  # nothing in this window
                now = totals.mark()
                taken.append((key, now, then, totals.window_max))
                totals.window_mark, totals.window_max = now, 0.0
        result = []
        for (model_id, version), now, then, max_ms in taken:
            stats = _since(now, then, max_ms)
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
                )
            )
        return result
