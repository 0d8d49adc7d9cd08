"""Prometheus exposition: a collector that reads the fleet, rollouts, ingest and chunk-server
counters (drops, dead letters and refusals by reason) and the telemetry totals (latency
histograms, requests and errors per model version and device group) at scrape time, and the
ingest rate meter it reports.

Latency is a classic histogram in seconds whose ``le`` edges are the powers of two of the agents'
exponential histograms, so its buckets are exact counts and ``histogram_quantile`` over any sum
of its series is a percentile of the merged distribution. There is no quantile gauge: a
percentile of one device's last window aggregates to nothing (the dashboard and the series API
compute percentiles from merged histograms). Native histograms are not exposed:
prometheus-client writes neither the protobuf format Prometheus scrapes them from nor, outside
its experimental OpenMetrics 2.0 text, any other.

Concurrency: ``collect`` runs on the server's worker thread per scrape (one short read-only
session); ``IngestRateMeter.run`` is the asyncio task ``ingest-rate`` sampling counters each second.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import select

from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.rollouts import facts
from edgefleet.controller.rollouts.states import RolloutStatus
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.telemetry_totals import LE_EDGES_MS, TotalsSnapshot
from edgefleet.shared.manifest import runtime_for_target

if TYPE_CHECKING:
    from edgefleet.controller.fleet.ingest import IngestCounters
    from edgefleet.controller.service import ControllerService

ROLLOUT_STATUSES = tuple(RolloutStatus)
RECENT_ROLLOUTS = 20
LE_SECONDS = tuple(repr(edge / 1000.0) for edge in LE_EDGES_MS)  # 7.8125e-06 ... 16.384
SERIES_LABELS = ["model_id", "version", "group"]


def device_online(row: DeviceRow, now: datetime, offline_after_s: float) -> bool:
    """Online: not marked offline (last will) and heard from within ``offline_after_s``."""
    return facts.device_online(row, now, timedelta(seconds=offline_after_s))


class IngestRateMeter:
    """Messages written and received per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, counters: IngestCounters) -> None:
        now = time.monotonic()
        self._samples.append((now, counters.written, sum(counters.received.values())))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(written per second, received per second); zero until two samples exist."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, w0, r0), (t1, w1, r1) = self._samples[0], self._samples[-1]
        elapsed = max(t1 - t0, 1e-6)
        return (w1 - w0) / elapsed, (r1 - r0) / elapsed

    async def run(self, counters: IngestCounters, interval_s: float = 1.0) -> None:
        while True:
            self.sample(counters)
            await asyncio.sleep(interval_s)


class FleetCollector(Collector):
    """Reads the database and the ingest counters on every scrape."""

    def __init__(self, service: ControllerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        with self.service.sessions() as session:
            devices = list(session.scalars(select(DeviceRow)))
            rollouts = list(
                session.scalars(
                    select(RolloutRow).order_by(RolloutRow.id.desc()).limit(RECENT_ROLLOUTS)
                )
            )
            rollout_ids = [r.id for r in rollouts]
            states = session.execute(
                select(RolloutDeviceRow.rollout_id, RolloutDeviceRow.state).where(
                    RolloutDeviceRow.rollout_id.in_(rollout_ids)
                )
            ).all()
        yield from self._devices(devices, now)
        yield from self._rollouts(rollouts, Counter((rid, state) for rid, state in states))
        yield from self._ingest()
        yield from telemetry_totals_metrics(self.service.telemetry_totals.snapshot())

    def _devices(self, devices: list[DeviceRow], now: datetime) -> Iterator[Metric]:
        after = self.service.settings.offline_after_s
        online_by: Counter[tuple[str, str, str]] = Counter()
        total = GaugeMetricFamily(
            "edgefleet_devices", "Known devices by connectivity", labels=["state"]
        )
        up = sum(1 for d in devices if device_online(d, now, after))
        total.add_metric(["online"], up)
        total.add_metric(["offline"], len(devices) - up)
        requests = GaugeMetricFamily(
            "edgefleet_device_window_requests",
            "Inference requests in the device's last telemetry window",
            labels=["device_id", "model_id", "version"],
        )
        cpu = GaugeMetricFamily(
            "edgefleet_device_cpu_percent", "Device CPU use", labels=["device_id"]
        )
        mem = GaugeMetricFamily(
            "edgefleet_device_memory_used_bytes", "Device memory in use", labels=["device_id"]
        )
        temp = GaugeMetricFamily(
            "edgefleet_device_temperature_celsius", "Device temperature", labels=["device_id"]
        )
        for device in devices:
            if not device_online(device, now, after):
                continue
            active = device.active or {}
            runtime: str = runtime_for_target(active["target"]) if active.get("target") else "none"
            online_by[(active.get("model_id", ""), active.get("version", ""), runtime)] += 1
            telemetry: dict[str, Any] = device.last_telemetry or {}
            for stats in telemetry.get("models", []):
                labels = [device.id, stats["model_id"], stats["version"]]
                requests.add_metric(labels, stats["requests"])
            system = telemetry.get("system")
            if system:
                cpu.add_metric([device.id], system["cpu_percent"])
                mem.add_metric([device.id], system["mem_used_bytes"])
                if system.get("temperature_c") is not None:
                    temp.add_metric([device.id], system["temperature_c"])
        by_version = GaugeMetricFamily(
            "edgefleet_devices_online",
            "Online devices by the model version and runtime they serve",
            labels=["model_id", "version", "runtime"],
        )
        for (model, version, runtime), count in sorted(online_by.items()):
            by_version.add_metric([model, version, runtime], count)
        yield from (total, by_version, requests, cpu, mem, temp)

    def _rollouts(
        self, rollouts: list[RolloutRow], states: Counter[tuple[int, str]]
    ) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "edgefleet_rollout_status",
            "1 for the rollout's current status (recent rollouts)",
            labels=["rollout_id", "model_id", "version", "status"],
        )
        wave = GaugeMetricFamily(
            "edgefleet_rollout_wave", "Current wave (0 is the canary)", labels=["rollout_id"]
        )
        waves = GaugeMetricFamily(
            "edgefleet_rollout_waves", "Number of waves", labels=["rollout_id"]
        )
        devices = GaugeMetricFamily(
            "edgefleet_rollout_devices",
            "Devices of a rollout by state",
            labels=["rollout_id", "state"],
        )
        for rollout in rollouts:
            rid = str(rollout.id)
            for name in sorted({*ROLLOUT_STATUSES, rollout.status}):
                value = 1.0 if name == rollout.status else 0.0
                status.add_metric([rid, rollout.model, rollout.version, name], value)
            wave.add_metric([rid], rollout.current_wave)
            waves.add_metric([rid], len(rollout.waves))
        for (rollout_id, state), count in sorted(states.items()):
            devices.add_metric([str(rollout_id), state], count)
        yield from (status, wave, waves, devices)

    def _ingest(self) -> Iterator[Metric]:
        ingest = self.service.ingest
        if ingest is None:
            return
        c = ingest.counters
        received = CounterMetricFamily(
            "edgefleet_ingest_received", "Valid device messages received", labels=["kind"]
        )
        for kind, count in sorted(c.received.items()):
            received.add_metric([kind], count)
        yield received
        for name, value, doc in (
            ("malformed", c.malformed, "Messages dropped as malformed"),
            ("oversize", c.oversize, "Messages dropped as larger than the wire limit"),
            ("spoofed", c.spoofed, "Messages dropped for claiming another device"),
            ("telemetry_dropped", c.telemetry_dropped, "Telemetry dropped: queue full or rate"),
            ("written", c.written, "Messages written to the database"),
            ("batches", c.batches, "Batches written (a transaction each, unless refused)"),
            ("write_retries", c.write_retries, "Batches written again: database unavailable"),
            ("transactions", c.transactions, "Write transactions, isolating refused ones too"),
        ):
            yield CounterMetricFamily(f"edgefleet_ingest_{name}", doc, value=value)
        yield from self._refusals()
        written_rate, received_rate = self.service.ingest_rate.rates()
        yield GaugeMetricFamily(
            "edgefleet_ingest_backlog",
            "Messages queued, not yet written",
            value=ingest.total_backlog,
        )
        rate = GaugeMetricFamily(
            "edgefleet_ingest_rate", "Messages per second, last 30 s", labels=["stage"]
        )
        rate.add_metric(["received"], received_rate)
        rate.add_metric(["written"], written_rate)
        yield rate
        bridge = self.service.bridge
        connected = bool(bridge is not None and bridge.connected.is_set())
        yield GaugeMetricFamily(
            "edgefleet_broker_connected", "1 when connected to the broker", value=float(connected)
        )

    def _refusals(self) -> Iterator[Metric]:
        """What was not written or served, by reason: drops, dead letters, chunk refusals."""
        ingest = self.service.ingest
        if ingest is None:
            return
        c = ingest.counters
        dropped = CounterMetricFamily(
            "edgefleet_ingest_dropped",
            "Device messages dropped before writing, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(c.dropped.items()):
            dropped.add_metric([reason], count)
        dead = CounterMetricFamily(
            "edgefleet_ingest_dead_letters",
            "Device messages the database refused even alone, dead-lettered, by kind and error",
            labels=["kind", "reason"],
        )
        for (kind, reason), count in sorted(c.dead_lettered.items()):
            dead.add_metric([kind, reason], count)
        clamped = CounterMetricFamily(
            "edgefleet_ingest_clamped_timestamps",
            "Device timestamps ahead of the controller's clock by more than the allowed skew, "
            "set to the time received, by kind and field",
            labels=["kind", "field"],
        )
        for (kind, name), count in sorted(c.clamped.items()):
            clamped.add_metric([kind, name], count)
        yield from (dropped, dead, clamped)
        chunks = self.service.chunks
        if chunks is None:
            return
        refused = CounterMetricFamily(
            "edgefleet_chunk_requests_refused",
            "Chunk requests not served, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(chunks.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "edgefleet_chunk_indices_dropped",
            "Requested chunk indices beyond their artifact's chunk count",
            value=chunks.indices_dropped,
        )


def telemetry_totals_metrics(totals: TotalsSnapshot) -> Iterator[Metric]:
    """Latency histograms, request, error and window counters per model version and device
    group, and what bounds them."""
    label = totals.group_label
    group = f"device group (the value of the device's hello label {label!r}, 'none' without it)"
    latency = HistogramMetricFamily(
        "edgefleet_model_latency_seconds",
        f"Inference latency of the requests in telemetry windows with a latency histogram (wire "
        f"v2), by model version and {group}; the buckets are exact: edges at powers of two",
        labels=SERIES_LABELS,
    )
    requests = CounterMetricFamily(
        "edgefleet_model_requests",
        f"Inference requests reported in telemetry (every wire version), by model version and "
        f"{group}",
        labels=SERIES_LABELS,
    )
    errors = CounterMetricFamily(
        "edgefleet_model_errors",
        "Inference requests that failed on the device, by model version and device group",
        labels=SERIES_LABELS,
    )
    client_errors = CounterMetricFamily(
        "edgefleet_model_client_errors",
        "Inference requests refused as bad requests, by model version and device group",
        labels=SERIES_LABELS,
    )
    summary_only = CounterMetricFamily(
        "edgefleet_model_summary_only_windows",
        "Telemetry windows with requests but no latency histogram (wire v1 agents): their "
        "requests are in edgefleet_model_requests_total, not in edgefleet_model_latency_seconds",
        labels=SERIES_LABELS,
    )
    coarse = CounterMetricFamily(
        "edgefleet_model_coarse_histogram_windows",
        "Telemetry windows whose latency histogram is coarser than the buckets (scale below 0), "
        "not in edgefleet_model_latency_seconds",
        labels=SERIES_LABELS,
    )
    for series in totals.series:
        labels = list(series.key)
        t = series.totals
        requests.add_metric(labels, t.requests)
        errors.add_metric(labels, t.errors)
        client_errors.add_metric(labels, t.client_errors)
        summary_only.add_metric(labels, t.summary_only_windows)
        if t.coarse_windows:
            coarse.add_metric(labels, t.coarse_windows)
        if series.buckets is not None:
            buckets = [*zip(LE_SECONDS, series.buckets, strict=True), ("+Inf", t.histogram.count)]
            latency.add_metric(labels, buckets, sum_value=t.histogram.sum / 1000.0)
    yield from (latency, requests, errors, client_errors, summary_only, coarse)
    yield GaugeMetricFamily(
        "edgefleet_model_series",
        f"(model, version, device group) series in the telemetry totals, at most "
        f"{totals.max_series}",
        value=len(totals.series),
    )
    yield CounterMetricFamily(
        "edgefleet_model_series_dropped_windows",
        "Model windows not counted: a new series while the series cap was reached",
        value=totals.dropped_windows,
    )
    yield CounterMetricFamily(
        "edgefleet_model_series_evicted",
        "Idle series forgotten to make room for new ones (their counters restart if they return)",
        value=totals.evicted_series,
    )


def build_registry(service: ControllerService) -> CollectorRegistry:
    """A registry of this service's collector alone (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(service))
    return registry
