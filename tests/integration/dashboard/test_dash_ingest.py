"""Ingest through a real mosquitto into a real controller: malformed, oversize and spoofed
telemetry is counted and dropped; a burst larger than the queue drops the oldest telemetry
(counted) and never an event or a state."""

from __future__ import annotations

from dash_sim import SimDevice, make_telemetry, topics_of
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.shared import EventType, encode
from support.mqtt import wait_until


def _metric_values(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_malformed_oversize_and_spoofed_telemetry_are_counted_and_dropped(start_controller, probe):
    controller = start_controller()
    topics = topics_of(controller)
    device = SimDevice(probe, topics, "pi-7")
    device.hello()
    topic = topics.telemetry("pi-7")
    probe.publish(topic, b"not json at all")
    probe.publish(topic, b'{"v":1,"kind":"telemetry","body":{"device_id":"pi-7"}}')
    probe.publish(topic, b'{"v":1,"kind":"telemetry","body":{"pad":"' + b"x" * 1_500_000 + b'"}}')
    probe.publish(topic, encode(make_telemetry("someone-else", 5.0)))  # claims another device
    device.telemetry(7.5, qos=1)

    def counted() -> bool:
        ingest = controller.get("/api/health")["ingest"]
        return ingest["written"] >= 2 and ingest["malformed"] >= 2

    wait_until(counted, timeout=20, interval=0.1)
    metrics = _metric_values(controller.api("GET", "/metrics").text)
    assert metrics["edgefleet_ingest_malformed_total"] == 2
    assert metrics["edgefleet_ingest_oversize_total"] == 1
    assert metrics["edgefleet_ingest_spoofed_total"] == 1
    points = controller.get("/api/telemetry?device_id=pi-7")
    assert [p["p95_ms"] for p in points] == [7.5]  # the valid one, and only it


def test_burst_larger_than_the_queue_drops_oldest_telemetry_and_keeps_events(
    start_controller, probe
):
    # A queue of 100 and a slow flush: a burst of 3,000 windows must overflow it.
    controller = start_controller(EDGEFLEET_INGEST_QUEUE="100", EDGEFLEET_INGEST_FLUSH_S="0.5")
    topics = topics_of(controller)
    devices = [SimDevice(probe, topics, f"burst-{i:02d}") for i in range(20)]
    for device in devices:
        device.hello()
    wait_until(lambda: len(controller.get("/api/devices")) == 20, timeout=20, interval=0.1)
    events = []
    for n in range(3000):
        device = devices[n % len(devices)]
        device.telemetry(1.0 + n % 7)  # QoS 0, as agents send telemetry
        if n % 75 == 0:
            events.append(device.event(EventType.COMMAND_DONE))
            device.state(version="1", serial=1 + n)
    assert len(events) == 40

    last: list[int] = []

    def settled() -> bool:
        # nothing waiting, and nothing more arriving: the broker may still be delivering
        # (QoS 0, some of which it may drop) after the backlog first reads zero
        ingest = controller.get("/api/health")["ingest"]
        received = ingest["received"].get("telemetry", 0)
        quiet = ingest["backlog"] == 0 and last[-1:] == [received] and received >= 2900
        last.append(received)
        return quiet

    wait_until(settled, timeout=60, interval=1.0)
    health = controller.get("/api/health")["ingest"]
    dropped = health["telemetry_dropped"]
    assert dropped > 0, health
    stored = controller.get("/api/telemetry?limit=10000")
    assert len(stored) + dropped == health["received"]["telemetry"]
    kept = {e["event_id"] for e in controller.get("/api/events?limit=1000")}
    assert {str(e.event_id) for e in events} <= kept  # not one event lost
    assert health["received"]["state"] == 40
    serials = [d["active"]["serial"] for d in controller.get("/api/devices") if d["active"]]
    assert max(serials) == 1 + 2925  # the last state of the burst was applied
    metrics = _metric_values(controller.api("GET", "/metrics").text)
    assert metrics["edgefleet_ingest_telemetry_dropped_total"] == dropped
