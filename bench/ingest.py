"""Ingest benchmark: a telemetry burst from many simulated devices through a real mosquitto,
persisted by a real controller process, next to a bare paho subscriber's receive rate of the
same burst on the same broker, measured in the same run. Prints JSON on its last line.

    python bench/ingest.py [--quick] [--ingest-workers N] [--batch N] [--controller-only]

Phase 1: the bare subscriber alone receives a burst. Phase 2: for context, a bare aiomqtt
subscriber (the controller's MQTT client library) receives it. Phase 3: the controller alone
ingests the same burst (same publisher, another topic root). Phase 4: the bare subscriber
again, once the controller has stopped; ``bare_rate`` is the mean of phases 1 and 4, since a
shared host's speed drifts over a run (the two are printed too). Telemetry is QoS 0, events and
state QoS 1, as agents send them. Goal: controller_rate >= 0.5 x bare_rate, with zero events
and states lost. The controller runs ``--ingest-workers`` telemetry ingest processes (default 2;
0 ingests in its main process); ``telemetry_lost`` counts windows sent but not stored, whether
the controller dropped them (``telemetry_dropped``) or never received them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from edgefleet.controller.config import Settings  # noqa: E402
from edgefleet.shared import DeviceState, Event, EventType, Topics, encode  # noqa: E402
from support.fleet import ControllerProcess  # noqa: E402
from support.mosquitto import MosquittoBroker  # noqa: E402
from support.samples import device_hello, device_state, device_telemetry, slot  # noqa: E402

SHA = "cd" * 32
EVENT_EVERY = 100  # one event per this many telemetry messages
OUTSTANDING = 30_000

Message = tuple[str, bytes, int]  # topic, payload, qos


def burst(topics: Topics, devices: int, windows: int) -> tuple[list[Message], int, int]:
    """Hello and state per device, then telemetry windows round-robin with events sprinkled in,
    then a final state per device. Returns (messages, events, states)."""
    now = datetime.now(UTC) - timedelta(seconds=windows)
    ids = [f"sim-{i:05d}" for i in range(devices)]
    out: list[Message] = []
    states = events = 0
    for device_id in ids:
        out.append((topics.hello(device_id), encode(device_hello(device_id, started_at=now)), 1))
        out.append((topics.state(device_id), encode(_state(device_id, 1, now)), 1))
        states += 1
    n = 0
    for w in range(windows):
        end = now + timedelta(seconds=w + 1)
        for device_id in ids:
            telemetry = device_telemetry(
                device_id, 2.0 + w % 5, requests=40, end=end, histogram=True
            )
            out.append((topics.telemetry(device_id), encode(telemetry), 0))
            n += 1
            if n % EVENT_EVERY == 0:
                event = Event(device_id=device_id, type=EventType.COMMAND_DONE, at=end, serial=1)
                out.append((topics.events(device_id), encode(event), 1))
                events += 1
    for device_id in ids:
        out.append((topics.state(device_id), encode(_state(device_id, 2, now)), 1))
        states += 1
    return out, events, states


def _state(device_id: str, serial: int, now: datetime) -> DeviceState:
    return device_state(device_id, active=slot("1", serial, sha256=SHA), at=now)


def publish_all(host: str, port: int, messages: list[Message]) -> None:
    """Run in a child process: publish every message as fast as the broker takes them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    # paho numbers every queued message, QoS 0 too, in 16 bits: with more than 65,535 unsent at
    # once a number repeats and the publish fails, so at most OUTSTANDING wait to be sent
    outstanding: deque[mqtt.MQTTMessageInfo] = deque()
    for topic, payload, qos in messages:
        outstanding.append(client.publish(topic, payload, qos=qos))
        while len(outstanding) > OUTSTANDING:
            outstanding.popleft().wait_for_publish(120)
    for info in outstanding:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


class BrokerDrops:
    """Messages the broker has dropped so far (``$SYS``, every second here): QoS 0 messages for
    a subscriber whose queue is at ``max_queued_messages``, that is, a burst that outran the
    subscriber for longer than the broker queues for it.

    Subscribed for the whole run: mosquitto publishes the figure only when it changes, retained
    for a minute, so a late subscriber may hear nothing."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.latest = 0
        self.heard = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-sys-{uuid.uuid4().hex[:6]}"
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda *args: self.client.subscribe(
            "$SYS/broker/publish/messages/dropped"
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        self.latest = int(msg.payload)
        self.heard.set()

    def now(self) -> int:
        if not self.heard.wait(30):
            raise SystemExit("the broker published no $SYS/broker/publish/messages/dropped")
        time.sleep(2.5)  # what it published last may be a second old
        return self.latest

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_publisher(broker: MosquittoBroker, messages: list[Message]) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(
        target=publish_all, args=(broker.host, broker.port, messages), name="bench-publisher"
    )
    process.start()
    return process


def bare_phase(broker: MosquittoBroker, messages: list[Message], topics: Topics) -> float:
    """Messages per second a bare paho subscriber receives of the burst."""
    arrivals: list[float] = []
    done = threading.Event()
    subscribed = threading.Event()
    expected = len(messages)

    def on_message(client, userdata, msg) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) >= expected:
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(broker.host, broker.port, keepalive=60)
    client.loop_start()
    client.subscribe(
        [
            (f"{topics.root}/devices/+/{c}", 0 if c == "telemetry" else 1)
            for c in ("hello", "state", "events", "telemetry")
        ]
    )
    subscribed.wait(10)
    publisher = run_publisher(broker, messages)
    done.wait(300)
    publisher.join(120)
    client.disconnect()
    client.loop_stop()
    if len(arrivals) < 2:
        return 0.0
    print(f"bare subscriber: {len(arrivals)}/{expected} messages", file=sys.stderr)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def aiomqtt_phase(broker: MosquittoBroker, messages: list[Message], topics: Topics) -> float:
    """The same as ``bare_phase`` with aiomqtt, the client library the controller's bridge uses:
    tells the MQTT client's share of the controller's cost apart from ingest's."""

    async def receive() -> float:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=1000,
            max_queued_incoming_messages=0,
        ) as client:
            for channel in ("hello", "state", "events", "telemetry"):
                qos = 0 if channel == "telemetry" else 1
                await client.subscribe(f"{topics.root}/devices/+/{channel}", qos=qos)
            publisher = run_publisher(broker, messages)
            count, first, last = 0, 0.0, 0.0
            try:
                async with asyncio.timeout(300):
                    async for _ in client.messages:
                        last = time.monotonic()
                        first = first or last
                        count += 1
                        if count >= len(messages):
                            break
            finally:
                await asyncio.to_thread(publisher.join, 120)
        print(f"bare aiomqtt subscriber: {count}/{len(messages)} messages", file=sys.stderr)
        return (count - 1) / (last - first) if count > 1 else 0.0

    return asyncio.run(receive())


def cpu_seconds(root: psutil.Process) -> dict[int, float]:
    """CPU seconds (user and system) so far of ``root`` and of each of its descendants."""
    out: dict[int, float] = {}
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[process.pid] = times.user + times.system
    return out


def controller_phase(
    broker: MosquittoBroker, controller: ControllerProcess, messages: list[Message]
) -> tuple[float, dict, float]:
    """Messages per second the controller persists of the burst, its final ingest counters, and
    the CPU time its processes (main and ingest workers) spent per message, in microseconds:
    the controller's own cost, apart from what the publisher and the broker took of the cores."""
    assert controller.proc is not None
    root = psutil.Process(controller.proc.pid)
    cpu_before = cpu_seconds(root)
    base = controller.get("/api/health")["ingest"]["written"]
    expected = base + len(messages)
    samples: list[tuple[float, int]] = []
    publisher = run_publisher(broker, messages)
    deadline = time.monotonic() + 600
    with httpx.Client(base_url=controller.url, timeout=10) as http:
        while time.monotonic() < deadline:
            ingest = http.get("/api/health").json()["ingest"]
            written = ingest["written"] + ingest["telemetry_dropped"]
            samples.append((time.monotonic(), ingest["written"]))
            publisher_done = not publisher.is_alive()
            if written >= expected or (
                publisher_done
                and ingest["backlog"] == 0
                and not ingest["workers"].get("stalled")  # its backlog report is stale
                and len(samples) > 20
                and samples[-20][1] == samples[-1][1]
            ):
                break
            time.sleep(0.1)  # the controller answers each poll: keep them few
        final = http.get("/api/health").json()["ingest"]
        final["batches"] = _metric(
            controller.api("GET", "/metrics").text, "edgefleet_ingest_batches"
        )
    cpu_after = cpu_seconds(root)
    publisher.join(60)
    spent = sum(cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after)
    main_spent = cpu_after[root.pid] - cpu_before[root.pid]
    print(f"controller CPU: {spent:.2f} s, main process {main_spent:.2f} s", file=sys.stderr)
    started = next((t for t, w in samples if w > base), samples[0][0])
    last_value = samples[-1][1]
    finished = next(t for t, w in samples if w == last_value)
    persisted = last_value - base
    return persisted / max(finished - started, 1e-3), final, spent / max(persisted, 1) * 1e6


def _default(setting: str) -> object:
    return Settings.model_fields[setting].default


def _metric(exposition: str, name: str) -> float:
    """One unlabelled sample of the Prometheus text exposition."""
    for family in text_string_to_metric_families(exposition):
        if family.name == name:
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise SystemExit(f"/metrics has no {name}")


def show_problems(log: str, lines: int = 30) -> None:
    """The controller's last warnings and errors, for a run that lost messages."""
    problems = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    print(f"messages were lost; the controller's last {lines} warnings:", file=sys.stderr)
    for line in problems[-lines:]:
        print(f"  {line[:300]}", file=sys.stderr)


def wait_for_workers(controller: ControllerProcess, workers: int) -> None:
    """Until every ingest worker process is subscribed (telemetry is QoS 0: what is published
    before a subscription exists is nobody's)."""
    deadline = time.monotonic() + 60
    while controller.get("/api/health")["ingest"]["workers"]["connected"] < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"the controller's {workers} ingest workers did not subscribe")
        time.sleep(0.1)


def count_losses(
    data_dir: Path, events: int, devices: int, final: dict, states: int, windows: int
) -> tuple[int, int, int]:
    """Events, states and telemetry windows sent but not in the database."""
    with sqlite3.connect(data_dir / "controller.db") as db:
        stored_events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        converged = db.execute(
            "SELECT count(*) FROM devices WHERE reported_last_serial = 2"
        ).fetchone()[0]
        stored_windows = db.execute("SELECT count(*) FROM system_samples").fetchone()[0]
    state_lost = max(0, states - final["received"].get("state", 0)) + (devices - converged)
    return events - stored_events, state_lost, windows - stored_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--windows", type=int)
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=2,
        help="the controller's ingest_workers setting (0: telemetry in the main process)",
    )
    parser.add_argument(
        "--batch", type=int, help="the controller's ingest_batch setting (default: its default)"
    )
    parser.add_argument(
        "--flush-s",
        type=float,
        help="the controller's ingest_worker_flush_s setting (default: its default)",
    )
    parser.add_argument(
        "--controller-only",
        action="store_true",
        help="skip the bare subscribers (no ratio): for comparing the controller's CPU per message",
    )
    args = parser.parse_args()
    devices = args.devices or (400 if args.quick else 1000)
    windows = args.windows or (50 if args.quick else 100)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "mosquitto", extra_config="sys_interval 1")
        broker.start()
        drops = BrokerDrops(broker)
        controller = None
        events_lost = state_lost = telemetry_lost = broker_drops = 0
        try:
            bare_topics = Topics(f"bench-bare/{uuid.uuid4().hex[:8]}/v1")
            ctl_topics = Topics(f"bench-ctl/{uuid.uuid4().hex[:8]}/v1")
            ctl_msgs, events, states = burst(ctl_topics, devices, windows)
            bare_rate = bare_after = aio_rate = 0.0
            if not args.controller_only:
                bare_msgs, _, _ = burst(bare_topics, devices, windows)
                bare_rate = bare_phase(broker, bare_msgs, bare_topics)
                aio_topics = Topics(f"bench-aio/{uuid.uuid4().hex[:8]}/v1")
                aio_msgs = burst(aio_topics, devices, windows)[0]
                aio_rate = aiomqtt_phase(broker, aio_msgs, aio_topics)
            controller = ControllerProcess(
                root / "controller",
                broker_url=broker.url,
                topic_root=ctl_topics.root,
                extra_env={
                    "EDGEFLEET_INGEST_WORKERS": str(args.ingest_workers),
                    # the burst replays each device's windows faster than an agent sends them:
                    # admit a device's whole burst rather than measure its rate limit
                    "EDGEFLEET_DEVICE_TELEMETRY_BURST": str(windows + 10),
                    "EDGEFLEET_TELEMETRY_ROLLUP_INTERVAL_S": "3600",
                    **({"EDGEFLEET_INGEST_BATCH": str(args.batch)} if args.batch else {}),
                    # the controller's own defaults, not the test suite's quick ones
                    "EDGEFLEET_INGEST_FLUSH_S": str(_default("ingest_flush_s")),
                    "EDGEFLEET_INGEST_WORKER_FLUSH_S": str(
                        args.flush_s or _default("ingest_worker_flush_s")
                    ),
                },
            ).start()
            wait_for_workers(controller, args.ingest_workers)
            dropped_before = drops.now()
            controller_rate, final, cpu_us = controller_phase(broker, controller, ctl_msgs)
            broker_drops = drops.now() - dropped_before
            events_lost, state_lost, telemetry_lost = count_losses(
                root / "controller", events, devices, final, states, devices * windows
            )
            if not args.controller_only:  # the host's speed drifts: the baseline again, after
                controller.stop()
                after_topics = Topics(f"bench-bare2/{uuid.uuid4().hex[:8]}/v1")
                after_msgs = burst(after_topics, devices, windows)[0]
                bare_after = bare_phase(broker, after_msgs, after_topics)
        finally:
            if controller is not None:
                controller.stop()
                if telemetry_lost or events_lost or state_lost:
                    show_problems(controller.log())
            drops.close()
            broker.stop()
    baseline = (bare_rate + bare_after) / 2
    result = {
        "controller_rate": round(controller_rate, 1),
        "bare_rate": round(baseline, 1),  # the mean of the two, before and after
        "ratio": round(controller_rate / baseline, 3) if baseline else 0.0,
        "bare_rate_before": round(bare_rate, 1),
        "bare_rate_after": round(bare_after, 1),
        "events_lost": events_lost,
        "state_lost": state_lost,
        "telemetry_lost": telemetry_lost,
        "controller_cpu_us_per_message": round(cpu_us, 1),
        "bare_aiomqtt_rate": round(aio_rate, 1),
        "messages": len(ctl_msgs),
        "devices": devices,
        "ingest_workers": args.ingest_workers,
        "telemetry_dropped": final["telemetry_dropped"],
        # lost at the broker: the burst outran the controller for longer than its queue holds
        "broker_dropped": broker_drops,
        # every process's batches (a transaction each): the main process writes the states and
        # events in small ones, the workers telemetry in batches of up to ingest_batch
        "rows_per_batch": round(final["written"] / max(final["batches"], 1), 1),
        "malformed": final["malformed"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
