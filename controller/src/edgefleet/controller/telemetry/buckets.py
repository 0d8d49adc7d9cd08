"""Pure bucketing of telemetry: time buckets and accumulators that merge windows into one point.

Latency of several windows merges exactly where they carry histograms (see
:mod:`edgefleet.controller.telemetry.latency`); v1 agents' summaries are combined as their
request-weighted mean and mark the point approximate. ``max`` is the maximum. Resource figures
are plain means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edgefleet.controller.registry.db import aware
from edgefleet.controller.telemetry.latency import MergedLatency
from edgefleet.shared.histogram import Histogram

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
    """A raw window or a rollup bucket of one model version on one device.

    ``histogram`` holds the latencies of the windows that carried one; ``p50_ms`` to ``p99_ms``
    are the (mean) percentiles of those that carried only a summary, standing for
    ``summary_weight`` requests (0: there are none).
    """

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
    histogram: Histogram | None = None
    summary_weight: int = 0

    @classmethod
    def of_window(
        cls,
        at: datetime,
        device_id: str,
        model_id: str,
        version: str,
        requests: int,
        errors: int,
        percentiles: tuple[float | None, float | None, float | None, float | None],
        histogram: Histogram | None,
    ) -> LatencySample:
        """One raw window: its histogram when it has one, else its summary ``(p50, p95, p99,
        max)``, which stands for its requests (a window with latency but no request counts
        once)."""
        p50, p95, p99, top = percentiles
        weight = 0 if histogram is not None or p95 is None else max(requests, 1)
        return cls(
            at, device_id, model_id, version, 1, requests, errors, p50, p95, p99, top,
            histogram, weight,
        )  # fmt: skip


@dataclass(slots=True)
class LatencyAccumulator:
    windows: int = 0
    requests: int = 0
    errors: int = 0
    latency: MergedLatency = field(default_factory=MergedLatency)

    def add(self, sample: LatencySample) -> None:
        self.windows += sample.windows
        self.requests += sample.requests
        self.errors += sample.errors
        latency = self.latency
        if sample.histogram is not None:
            latency.add_histogram(sample.histogram)
        if sample.summary_weight:
            latency.add_summary(sample.summary_weight, sample.p50_ms, sample.p95_ms, sample.p99_ms)
        latency.see_max(sample.max_ms)

    @property
    def max_ms(self) -> float | None:
        return self.latency.max_ms

    @property
    def exact(self) -> bool:
        return self.latency.exact

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        return self.latency.percentiles()


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
