"""Telemetry windows carrying given latencies, as a v2 agent sends them (an exponential
histogram plus the summary derived from it) or as a v1 agent does (the summary alone)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from edgefleet.shared import LatencySummary, ModelStats, Telemetry, Topics, encode
from edgefleet.shared.bounds import MAX_HISTOGRAM_BUCKETS
from edgefleet.shared.histogram import SCALE, Histogram
from edgefleet.shared.messages import LatencyHistogram
from support.mqtt import MqttProbe
from support.samples import SIM_SYSTEM, device_hello


def latencies(rng: random.Random, n: int, median_ms: float = 3.0) -> list[float]:
    """``n`` latencies (ms) around ``median_ms`` with a tail, rounded to the microsecond."""
    return [round(rng.lognormvariate(0.0, 0.6) * median_ms, 3) for _ in range(n)]


def model_stats(
    values: Sequence[float],
    *,
    model_id: str = "tiny",
    version: str = "1",
    errors: int = 0,
    client_errors: int = 0,
    histogram: bool = True,
    scale: int = SCALE,
) -> ModelStats:
    """One model version's window of ``values`` (ms) at ``scale`` (coarser if the wire's
    bucket limit needs it); with ``histogram`` False, a v1 agent's."""
    recorded = Histogram.of_values(values, scale)
    summary = None
    if values:
        summary = LatencySummary(
            p50=recorded.percentile(0.5) or 0.0,
            p95=recorded.percentile(0.95) or 0.0,
            p99=recorded.percentile(0.99) or 0.0,
            max=max(values),
        )
    wire = (
        LatencyHistogram.model_validate(recorded.wire_fields(MAX_HISTOGRAM_BUCKETS))
        if values
        else None
    )
    return ModelStats(
        model_id=model_id,
        version=version,
        requests=len(values),
        errors=errors,
        client_errors=client_errors,
        latency_ms=summary,
        throughput_rps=float(len(values)),
        latency_hist=wire if histogram else None,
    )


def window(device_id: str, *models: ModelStats, end: datetime | None = None) -> Telemetry:
    end = end or datetime.now(UTC)
    return Telemetry(
        device_id=device_id,
        window_start=end - timedelta(seconds=1),
        window_end=end,
        models=models,
        system=SIM_SYSTEM,
    )


class LatencyFleet:
    """Devices of wire v2 (histograms) and v1 (summaries) publishing windows of known
    latencies through a real broker, remembering what each (model, version, group) was sent."""

    def __init__(self, probe: MqttProbe, topics: Topics, seed: int = 0) -> None:
        self.probe, self.topics = probe, topics
        self.rng = random.Random(seed)
        self.groups: dict[str, str] = {}
        self.wire: dict[str, int] = {}
        self.histogram_ms: dict[tuple[str, str, str], list[float]] = {}
        self.requests: dict[tuple[str, str, str], int] = {}
        self.errors: dict[tuple[str, str, str], int] = {}
        self.summary_only: dict[tuple[str, str, str], int] = {}

    def hello(self, device_id: str, group: str | None, *, wire: int = 2) -> None:
        labels = {"site": "lab"} if group is None else {"group": group, "site": "lab"}
        self.groups[device_id], self.wire[device_id] = group or "none", wire
        message = device_hello(device_id, labels=labels)
        self.probe.publish(self.topics.hello(device_id), encode(message, version=wire))

    def send(
        self, device_id: str, n: int, *, version: str = "1", median_ms: float = 3.0,
        errors: int = 0,
    ) -> list[float]:  # fmt: skip
        """A window of ``n`` requests of one version (QoS 1); returns its latencies."""
        values = latencies(self.rng, n, median_ms)
        v2 = self.wire[device_id] >= 2
        stats = model_stats(values, version=version, errors=errors, histogram=v2)
        key = ("tiny", version, self.groups[device_id])
        self.requests[key] = self.requests.get(key, 0) + n
        self.errors[key] = self.errors.get(key, 0) + errors
        if v2:
            self.histogram_ms.setdefault(key, []).extend(values)
        elif n:
            self.summary_only[key] = self.summary_only.get(key, 0) + 1
        payload = encode(window(device_id, stats), version=self.wire[device_id])
        self.probe.publish(self.topics.telemetry(device_id), payload, qos=1)
        return values
