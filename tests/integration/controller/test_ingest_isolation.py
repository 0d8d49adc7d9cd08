"""A device whose messages the database refuses, through a real mosquitto into a real controller:
its messages are dead-lettered and counted in ``/metrics`` and on the fleet page while another
device's land; its retained state comes back after a restart and only counts up its dead letter;
a device flooding telemetry loses its excess, counted by reason."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgefleet.shared import Event, EventType, Topics, encode
from support.fleet import ControllerProcess
from support.mosquitto import MosquittoBroker
from support.mqtt import MqttProbe, wait_until
from support.samples import device_hello, device_state, device_telemetry, slot

REFUSE_POISON = """
CREATE TRIGGER refuse_poison_device BEFORE INSERT ON devices WHEN NEW.id = 'poison'
BEGIN SELECT RAISE(ABORT, 'refused: poison device'); END;
CREATE TRIGGER refuse_poison_event BEFORE INSERT ON events WHEN NEW.device_id = 'poison'
BEGIN SELECT RAISE(ABORT, 'refused: poison event'); END;
"""


def metric(controller: ControllerProcess, name: str, **labels: str) -> float:
    text = controller.api("GET", "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def dead_letter_counts(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT kind, count FROM dead_letters WHERE device_id='poison'")
        return dict(rows.fetchall())


def send_all(probe: MqttProbe, topics: Topics, device_id: str) -> None:
    now = datetime.now(UTC)
    event = Event(device_id=device_id, type=EventType.COMMAND_DONE, at=now)
    probe.publish(topics.hello(device_id), encode(device_hello(device_id)))
    state = device_state(device_id, active=slot())
    probe.publish(topics.state(device_id), encode(state), retain=True)
    probe.publish(topics.events(device_id), encode(event))


def test_a_device_the_database_refuses_affects_no_other(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    topics = Topics(f"edgefleet-isolation/{uuid.uuid4().hex[:10]}/v1")
    controller = ControllerProcess(
        tmp_path / "controller",
        broker_url=mosquitto.url,
        topic_root=topics.root,
        extra_env={"EDGEFLEET_SHARE_GROUP": f"iso{uuid.uuid4().hex[:6]}"},
    ).start()
    db = tmp_path / "controller" / "controller.db"
    with closing(sqlite3.connect(db)) as connection:
        connection.executescript(REFUSE_POISON)
    try:
        with MqttProbe(mosquitto.host, mosquitto.port) as probe:
            send_all(probe, topics, "poison")
            send_all(probe, topics, "pi-good")
            for _ in range(60):  # a flood, at once: more than the burst of 20
                probe.publish(topics.telemetry("flood"), encode(device_telemetry("flood", 3.0)))
            probe.publish(topics.telemetry("pi-good"), encode(device_telemetry("pi-good", 2.0)))

            def settled() -> bool:
                health = controller.get("/api/health")["ingest"]
                return health["backlog"] == 0 and health["received"].get("telemetry", 0) == 61

            wait_until(settled, timeout=30, interval=0.1)
            wait_until(lambda: len(dead_letter_counts(db)) == 3, timeout=30, interval=0.1)

            devices = {d["id"]: d for d in controller.get("/api/devices")}
            assert set(devices) == {"pi-good", "flood"}
            assert devices["pi-good"]["active"]["version"] == "1"
            events = controller.get("/api/events?limit=100")
            assert [e["device_id"] for e in events] == ["pi-good"]
            assert len(controller.get("/api/telemetry?device_id=pi-good")) == 1
            stored_flood = len(controller.get("/api/telemetry?device_id=flood&limit=1000"))
            assert 20 <= stored_flood < 60
            assert dead_letter_counts(db) == {"hello": 1, "state": 1, "events": 1}

            for kind in ("hello", "state", "events"):
                assert metric(
                    controller, "edgefleet_ingest_dead_letters_total",
                    kind=kind, reason="IntegrityError",
                ) == 1  # fmt: skip
            dropped = metric(
                controller, "edgefleet_ingest_dropped_total", reason="telemetry_rate_limited"
            )
            assert dropped == 60 - stored_flood
            assert metric(controller, "edgefleet_ingest_write_retries_total") == 0
            page = controller.api("GET", "/dashboard")
            assert page.status_code == 200
            assert (
                "dead-lettered: events IntegrityError 1 · hello IntegrityError 1 · "
                "state IntegrityError 1" in page.text
            )
            assert f"telemetry_rate_limited {int(dropped)}" in page.text

            # Restarted, the controller gets the retained poison state again: one more repeat
            # of its dead letter, not a new row, and nothing else held up.
            controller.stop()
            controller.start()
            wait_until(lambda: dead_letter_counts(db)["state"] == 2, timeout=30, interval=0.1)
            probe.publish(topics.hello("pi-late"), encode(device_hello("pi-late")))
            wait_until(
                lambda: "pi-late" in {d["id"] for d in controller.get("/api/devices")},
                timeout=30,
                interval=0.1,
            )
            assert dead_letter_counts(db) == {"hello": 1, "state": 2, "events": 1}
            assert metric(
                controller, "edgefleet_ingest_dead_letters_total",
                kind="state", reason="IntegrityError",
            ) == 1  # fmt: skip
            probe.publish(topics.state("poison"), b"", retain=True)  # clear the retained poison
            probe.publish(topics.state("pi-good"), b"", retain=True)
    finally:
        controller.stop()
