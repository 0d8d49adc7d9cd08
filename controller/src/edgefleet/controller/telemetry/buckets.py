"""Pure bucketing of telemetry: time buckets and accumulators that merge windows into one point.

Latency percentiles of several windows are merged as their request-weighted mean (a window with
latency but no request counts once); ``max`` is the maximum. Resource figures are plain means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from edgefleet.controller.registry.db import aware

NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def floor_to(moment: datetime, step_s: int) -> datetime:
    """The start of the ``step_s``-second bucket holding ``moment`` (buckets align to the epoch)."""
    seconds = aware(moment).timestamp()
    return datetime.fromtimestamp(seconds - seconds % step_s, UTC)


def nice_step(span_s: float, max_points: int, minimum_s: int) -> int:
    """The smallest step from a human-friendly list giving at most ``max_points`` buckets."""
    wanted = max(float(minimum_s), span_s / max(1, max_points))
    for step in NICE_STEPS_S:
        if step >= wanted:
            return step
    return int(-(-wanted // 86400) * 86400)


@dataclass(frozen=True, slots=True)
class LatencySample:
    """A raw window or a rollup bucket of one model version on one device."""

    at: datetime
    device_id: str
    model_id: str
    version: str
    windows: int
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(slots=True)
class LatencyAccumulator:
    windows: int = 0
    requests: int = 0
    errors: int = 0
    weight: int = 0
    p50_sum: float = 0.0
    p95_sum: float = 0.0
    p99_sum: float = 0.0
    max_ms: float | None = None

    def add(self, sample: LatencySample) -> None:
        self.windows += sample.windows
        self.requests += sample.requests
        self.errors += sample.errors
        if sample.p95_ms is None:
            return
        weight = max(sample.requests, 1)
        self.weight += weight
        self.p50_sum += weight * (sample.p50_ms or 0.0)
        self.p95_sum += weight * sample.p95_ms
        self.p99_sum += weight * (sample.p99_ms or sample.p95_ms)
        if sample.max_ms is not None:
            self.max_ms = sample.max_ms if self.max_ms is None else max(self.max_ms, sample.max_ms)

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        if not self.weight:
            return None, None, None
        return self.p50_sum / self.weight, self.p95_sum / self.weight, self.p99_sum / self.weight


@dataclass(frozen=True, slots=True)
class SystemSample:
    at: datetime
    device_id: str
    samples: int
    cpu_percent: float
    mem_used_bytes: float
    mem_total_bytes: float
    rss_bytes: float
    temperature_c: float | None


@dataclass(slots=True)
class SystemAccumulator:
    samples: int = 0
    cpu: float = 0.0
    mem_used: float = 0.0
    mem_total: float = 0.0
    rss: float = 0.0
    temp_samples: int = 0
    temp: float = 0.0

    def add(self, sample: SystemSample) -> None:
        n = sample.samples
        self.samples += n
        self.cpu += n * sample.cpu_percent
        self.mem_used += n * sample.mem_used_bytes
        self.mem_total += n * sample.mem_total_bytes
        self.rss += n * sample.rss_bytes
        if sample.temperature_c is not None:
            self.temp_samples += n
            self.temp += n * sample.temperature_c

    def means(self) -> tuple[float, float, float, float, float | None]:
        """cpu %, memory used, memory total, rss (bytes), temperature (°C or None)."""
        n = max(self.samples, 1)
        temperature = self.temp / self.temp_samples if self.temp_samples else None
        return self.cpu / n, self.mem_used / n, self.mem_total / n, self.rss / n, temperature


LatencyKey = tuple[str, str, str, datetime]  # device, model, version, bucket start


def bucket_latency(
    samples: Iterable[LatencySample], step_s: int, *, per_device: bool = True
) -> dict[LatencyKey, LatencyAccumulator]:
    """Merge samples into ``step_s`` buckets, per device (or across devices: device ``*``)."""
    buckets: dict[LatencyKey, LatencyAccumulator] = {}
    for sample in samples:
        key = (
            sample.device_id if per_device else "*",
            sample.model_id,
            sample.version,
            floor_to(sample.at, step_s),
        )
        accumulator = buckets.get(key)
        if accumulator is None:
            accumulator = buckets[key] = LatencyAccumulator()
        accumulator.add(sample)
    return buckets


def bucket_system(
    samples: Iterable[SystemSample], step_s: int, *, per_device: bool = True
) -> dict[tuple[str, datetime], SystemAccumulator]:
    buckets: dict[tuple[str, datetime], SystemAccumulator] = {}
    for sample in samples:
        key = (sample.device_id if per_device else "*", floor_to(sample.at, step_s))
        accumulator = buckets.get(key)
        if accumulator is None:
            accumulator = buckets[key] = SystemAccumulator()
        accumulator.add(sample)
    return buckets
