"""Prometheus exposition: a collector that reads the fleet, rollouts, ingest and chunk-server
counters (drops, dead letters and refusals by reason) at scrape time, and the ingest rate meter
it reports.

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

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import select

from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.rollouts import facts
from edgefleet.controller.rollouts.states import RolloutStatus
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared.manifest import runtime_for_target

if TYPE_CHECKING:
    from edgefleet.controller.fleet.ingest import IngestCounters
    from edgefleet.controller.service import ControllerService

ROLLOUT_STATUSES = tuple(RolloutStatus)
RECENT_ROLLOUTS = 20


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

    def _devices(self, devices: list[DeviceRow], now: datetime) -> Iterator[Metric]:
        after = self.service.settings.offline_after_s
        online_by: Counter[tuple[str, str, str]] = Counter()
        total = GaugeMetricFamily(
            "edgefleet_devices", "Known devices by connectivity", labels=["state"]
        )
        up = sum(1 for d in devices if device_online(d, now, after))
        total.add_metric(["online"], up)
        total.add_metric(["offline"], len(devices) - up)
        latency = GaugeMetricFamily(
            "edgefleet_device_latency_seconds",
            "Inference latency percentile over the device's last telemetry window",
            labels=["device_id", "model_id", "version", "quantile"],
        )
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
                summary = stats.get("latency_ms")
                if summary:
                    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                        latency.add_metric([*labels, quantile], summary[key] / 1000.0)
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
        yield from (total, by_version, latency, requests, cpu, mem, temp)

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
            "edgefleet_ingest_backlog", "Messages queued, not yet written", value=ingest.backlog
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


def build_registry(service: ControllerService) -> CollectorRegistry:
    """A registry of this service's collector alone (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(service))
    return registry
