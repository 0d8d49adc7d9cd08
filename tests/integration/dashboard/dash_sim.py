"""Simulated devices for dashboard tests: publish what an agent would, as real wire messages."""

from __future__ import annotations

from datetime import UTC, datetime

from edgefleet.shared import Event, EventType, Telemetry, Topics, encode
from support.fleet import ControllerProcess
from support.mqtt import MqttProbe
from support.samples import device_hello, device_state, device_telemetry, slot

SHA = "ab" * 32


class SimDevice:
    """Publishes what an agent would, through a real broker, from one paho client."""

    def __init__(self, probe: MqttProbe, topics: Topics, device_id: str) -> None:
        self.probe, self.topics, self.device_id = probe, topics, device_id

    def hello(self, labels: dict[str, str] | None = None) -> None:
        message = device_hello(self.device_id, labels=labels or {"site": "lab"})
        self.probe.publish(self.topics.hello(self.device_id), encode(message))

    def state(self, version: str = "1", serial: int = 1) -> None:
        message = device_state(self.device_id, active=slot(version, serial, sha256=SHA))
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
    return device_telemetry(device_id, p95, version=version, end=end)


def topics_of(controller: ControllerProcess) -> Topics:
    return Topics(controller.env["EDGEFLEET_TOPIC_ROOT"])
