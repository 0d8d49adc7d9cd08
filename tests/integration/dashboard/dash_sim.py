"""Simulated devices for dashboard tests: publish what an agent would, as real wire messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefleet.shared import (
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    Hardware,
    Hello,
    LatencySummary,
    ModelStats,
    RuntimeInfo,
    SlotInfo,
    SystemStats,
    Telemetry,
    Topics,
    encode,
)
from support.fleet import ControllerProcess
from support.mqtt import MqttProbe

SHA = "ab" * 32


class SimDevice:
    """Publishes what an agent would, through a real broker, from one paho client."""

    def __init__(self, probe: MqttProbe, topics: Topics, device_id: str) -> None:
        self.probe, self.topics, self.device_id = probe, topics, device_id

    def hello(self, labels: dict[str, str] | None = None) -> None:
        message = Hello(
            device_id=self.device_id,
            agent_version="0.1.0",
            hardware=Hardware(arch="aarch64", cpu_count=4, ram_bytes=4 << 30, os="Linux"),
            runtimes=(RuntimeInfo(name="onnxruntime", version="1.20.1"),),
            labels=labels or {"site": "lab"},
            started_at=datetime.now(UTC),
        )
        self.probe.publish(self.topics.hello(self.device_id), encode(message))

    def state(self, version: str = "1", serial: int = 1) -> None:
        slot = SlotInfo(model_id="tiny", version=version, serial=serial, sha256=SHA,
                        target="onnx-int8")  # fmt: skip
        message = DeviceState(
            device_id=self.device_id, status=DeviceStatus.SERVING, active=slot,
            last_serial=serial, updated_at=datetime.now(UTC),
        )  # fmt: skip
        self.probe.publish(self.topics.state(self.device_id), encode(message), retain=True)

    def telemetry(
        self, p95: float = 4.0, *, version: str = "1", end: datetime | None = None, qos: int = 0
    ) -> None:
        self.probe.publish(
            self.topics.telemetry(self.device_id),
            encode(make_telemetry(self.device_id, p95, version=version, end=end)),
            qos=qos,
        )

    def event(self, kind: EventType, version: str = "1", at: datetime | None = None) -> Event:
        message = Event(
            device_id=self.device_id, type=kind, at=at or datetime.now(UTC), model_id="tiny",
            version=version, serial=1, reason=f"test {kind.value}",
        )  # fmt: skip
        self.probe.publish(self.topics.events(self.device_id), encode(message))
        return message


def make_telemetry(
    device_id: str, p95: float, *, version: str = "1", end: datetime | None = None
) -> Telemetry:
    end = end or datetime.now(UTC)
    return Telemetry(
        device_id=device_id,
        window_start=end - timedelta(seconds=1),
        window_end=end,
        models=(
            ModelStats(
                model_id="tiny",
                version=version,
                requests=50,
                errors=0,
                latency_ms=LatencySummary(p50=p95 / 2, p95=p95, p99=p95 * 1.2, max=p95 * 2),
                throughput_rps=50.0,
            ),
        ),
        system=SystemStats(
            cpu_percent=35.0,
            process_cpu_percent=5.0,
            rss_bytes=80 << 20,
            mem_used_bytes=1 << 30,
            mem_total_bytes=4 << 30,
            temperature_c=48.5,
            disk_free_bytes=8 << 30,
        ),
    )


def topics_of(controller: ControllerProcess) -> Topics:
    return Topics(controller.env["EDGEFLEET_TOPIC_ROOT"])
