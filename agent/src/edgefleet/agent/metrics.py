"""Per-model-version request counts and latency percentiles in bounded memory.

Latencies go into a log-bucketed histogram (2 % wide buckets from 1 µs to ~100 s), so memory
is fixed whatever the request rate and percentiles are accurate to about 1 %.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from edgefleet.agent import measured
from edgefleet.shared.messages import LatencySummary, ModelStats

_MIN_MS = 0.001
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = int(math.log(100_000.0 / _MIN_MS) / _LOG_GROWTH) + 2

VersionKey = tuple[str, str]


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds."""
    if ms <= _MIN_MS:
        return 0
    return min(_BUCKETS - 1, int(math.log(ms / _MIN_MS) / _LOG_GROWTH) + 1)


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


class MetricsRegistry:
    """Every request's outcome, per model version, for telemetry windows and health watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: dict[VersionKey, VersionStats] = {}
        self._since_load: dict[VersionKey, VersionStats] = {}

    def _both(self, key: VersionKey) -> tuple[VersionStats, VersionStats]:
        window = self._window.get(key)
        if window is None:
            window = self._window[key] = VersionStats()
        total = self._since_load.get(key)
        if total is None:
            total = self._since_load[key] = VersionStats()
        return window, total

    def record_ok(self, key: VersionKey, ms: float) -> None:
        index = bucket_of(ms)
        with self._lock:
            window, total = self._both(key)
            window.requests += 1
            window.latency.record_at(index, ms)
            total.requests += 1
            total.latency.record_at(index, ms)

    def record_error(self, key: VersionKey, ms: float) -> None:
        index = bucket_of(ms)
        with self._lock:
            for stats in self._both(key):
                stats.requests += 1
                stats.errors += 1
                stats.latency.record_at(index, ms)

    def record_client_error(self, key: VersionKey) -> None:
        with self._lock:
            for stats in self._both(key):
                stats.client_errors += 1

    def reset_version(self, key: VersionKey) -> None:
        """Start a version's since-load figures afresh (it was just swapped in)."""
        with self._lock:
            self._since_load[key] = VersionStats()

    def since_load(self, key: VersionKey) -> VersionStats:
        """A copy of a version's figures since it was (last) swapped in."""
        with self._lock:
            stats = self._since_load.get(key) or VersionStats()
            copy = VersionStats(stats.requests, stats.errors, stats.client_errors)
            copy.latency.counts = list(stats.latency.counts)
            copy.latency.count = stats.latency.count
            copy.latency.max_ms = stats.latency.max_ms
            return copy

    def take_window(self, seconds: float) -> list[ModelStats]:
        """Per-version figures since the last call, and start a new window."""
        with self._lock:
            window, self._window = self._window, {}
        return [
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
            for (model_id, version), stats in window.items()
        ]
