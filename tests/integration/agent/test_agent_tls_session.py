"""One TLS session per agent for as long as the broker stays up: through many hot swaps, a
telemetry flood and inbound traffic, with no reconnect.

Two enrolled agents (dynamic-security identities, pinned CA, the production broker config)
are the operator's setup. A reconnect is counted three ways: the session's CONNACK count, the
hellos the device sent (one per connect) and the broker's connection log.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.agent import Agent
from edgefleet.agent.mqtt_session import MqttSession
from edgefleet.agent.settings import AgentSettings
from edgefleet.controller.security.dynsec import DynsecAdmin
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.identities import BrokerIdentities
from edgefleet.shared import EventType, Topics
from support.agent_harness import DeviceWatcher, make_settings, x_batch
from support.mqtt import MqttProbe, wait_until
from support.publisher import TestPublisher
from support.secure_broker import SecureBroker, probe

SWAPS = 50
PER_THREAD = 400  # messages each test thread sends in the socket test


@dataclass
class TlsFleet:
    """A broker from the production config generator, with the controller's identity."""

    broker: SecureBroker
    topics: Topics
    identities: BrokerIdentities
    controller: BrokerCredentials


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFleet]:
    broker = SecureBroker(tmp_path_factory.mktemp("tls-session-broker"))
    broker.start()
    topics = Topics(root=f"edgefleet-test/{uuid.uuid4().hex[:12]}/v1")
    try:
        with DynsecAdmin(broker.admin_endpoint()) as admin:
            identities = BrokerIdentities(admin, topics)
            yield TlsFleet(broker, topics, identities, identities.setup_controller())
    finally:
        broker.kill()


def device_settings(
    fleet: TlsFleet, device_id: str, key_path: Path, data_dir: Path, **extra: object
) -> AgentSettings:
    """Enroll ``device_id`` on the broker and return its agent settings (mqtts, pinned CA)."""
    credentials = fleet.identities.add_device(device_id).credentials
    return make_settings(
        device_id=device_id,
        broker_url=fleet.broker.tls_url,
        topics=fleet.topics,
        key_path=key_path,
        data_dir=data_dir,
        username=credentials.username,
        password=credentials.password,
        tls_ca_file=fleet.broker.pki.ca_cert,
        **extra,
    )


def broker_sessions(broker: SecureBroker, username: str) -> int:
    """How many sessions the broker accepted for ``username`` (its connection log)."""
    return sum(
        1 for line in broker.log().splitlines()
        if "New client connected" in line and f"u'{username}'" in line
    )  # fmt: skip


def clean_disconnects(broker: SecureBroker, device_id: str) -> int:
    """How many of the device's sessions ended with its DISCONNECT (no will published)."""
    pattern = re.compile(rf"Client edgefleet-agent-{re.escape(device_id)}-\w+ disconnected\.$")
    return sum(1 for line in broker.log().splitlines() if pattern.search(line))


def telemetry_seen(p: MqttProbe, topics: Topics, device: str) -> int:
    return p.count(lambda r: r.topic == topics.telemetry(device))


def tls_errors(broker: SecureBroker) -> list[str]:
    return [line for line in broker.log().splitlines() if "OpenSSL Error" in line]


class SocketWriters:
    """Records which threads write to (and read from) a session's TLS socket.

    OpenSSL forbids two threads in one SSL object at once; the session promises that only its
    network thread touches the socket, and this is how the test sees whether it keeps that.
    """

    def __init__(self, session: MqttSession) -> None:
        self.session = session
        self.threads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def attach(self) -> None:
        """Wrap the live socket's ``send`` and ``recv`` (called on the network thread, at
        CONNACK, before anything else can write)."""
        sock = self.session._client.socket()  # the paho client's SSLSocket, wrapped in place
        assert sock is not None
        for name in ("send", "recv"):
            setattr(sock, name, self._recording(name, getattr(sock, name)))

    def _recording(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.threads[f"{name}:{threading.current_thread().name}"] += 1
            return method(*args, **kwargs)

        return call


def test_only_the_network_thread_touches_the_tls_socket(tls_fleet, signing, tmp_path):
    """Four threads publish while the broker floods the device: every socket write is the
    network thread's, every message arrives, and the one session stays up."""
    device = f"pi-s-{uuid.uuid4().hex[:6]}"
    topics = tls_fleet.topics
    settings = device_settings(tls_fleet, device, signing[1], tmp_path / "data")
    inbound: list[int] = []
    writers: SocketWriters | None = None

    def on_connected() -> None:
        assert writers is not None
        writers.attach()

    session = MqttSession(
        settings,
        on_message=lambda topic, payload: inbound.append(len(payload)),
        on_connected=on_connected,
        will=(topics.state(device), b"offline"),
    )
    writers = SocketWriters(session)
    session.subscribe(topics.desired(device), 1)
    session.subscribe(topics.commands(device), 1)
    try:
        with probe(tls_fleet.broker.tls_endpoint(tls_fleet.controller)) as ctl:
            ctl.subscribe(topics.events(device))
            ctl.subscribe(topics.telemetry(device))
            session.start()
            assert session.connected.wait(10), session.last_refusal
            wait_until(lambda: session.connects == 1, timeout=5)
            # the device's desired and commands subscriptions are in place before the flood
            assert session.subscribe(topics.desired(device), 1, timeout=5), (
                f"no SUBACK; {session.connects} sessions; {tls_errors(tls_fleet.broker)[:2]}"
            )

            def publisher(index: int) -> None:
                # QoS 1 events and QoS 0 telemetry, sizes from one TLS record to several
                topic = topics.events(device) if index % 2 else topics.telemetry(device)
                payload = bytes([65 + index]) * (300 + 9000 * index)
                for n in range(PER_THREAD):
                    session.publish(topic, payload, qos=index % 2)
                    if n % 10 == 0:
                        time.sleep(0.001)

            def flood_in() -> None:
                for _ in range(PER_THREAD):
                    ctl.client.publish(topics.desired(device), b"d" * 2000, qos=1)
                    ctl.client.publish(topics.commands(device), b"c" * 100, qos=1)
                    time.sleep(0.001)

            threads = [
                threading.Thread(target=publisher, args=(i,), name=f"test-publisher-{i}")
                for i in range(4)
            ] + [threading.Thread(target=flood_in, name="test-flood-in")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            events = lambda r: r.topic == topics.events(device)  # noqa: E731
            telemetry = lambda r: r.topic == topics.telemetry(device)  # noqa: E731

            def delivered() -> bool:
                return ctl.count(events) >= 2 * PER_THREAD and len(inbound) >= 2 * PER_THREAD

            with contextlib.suppress(TimeoutError):  # a lost session loses messages: said below
                wait_until(lambda: delivered() or session.connects > 1, timeout=30)
            assert session.connects == 1, tls_errors(tls_fleet.broker)[:3]
            assert ctl.count(events) == 2 * PER_THREAD
            wait_until(lambda: ctl.count(telemetry) >= 2 * PER_THREAD, timeout=10)
            assert ctl.count(telemetry) == 2 * PER_THREAD
    finally:
        session.stop()
    assert len(inbound) == 2 * PER_THREAD
    assert session.connects == 1
    assert broker_sessions(tls_fleet.broker, device) == 1
    wait_until(lambda: clean_disconnects(tls_fleet.broker, device) == 1, timeout=5)
    assert tls_errors(tls_fleet.broker) == []
    network = f"edgefleet-agent-mqtt-{device}"
    wrote = {name for name in writers.threads if name.startswith("send:")}
    read = {name for name in writers.threads if name.startswith("recv:")}
    assert wrote == {f"send:{network}"}, writers.threads
    assert read == {f"recv:{network}"}, writers.threads


def test_two_agents_keep_one_tls_session_through_50_swaps_and_a_telemetry_flood(
    tls_fleet, models, signing, tmp_path
):
    """Each of two enrolled agents swaps models 50 times (fetched as MQTT chunks over TLS)
    while it publishes telemetry every 5 ms and serves inference: one session each."""
    topics = tls_fleet.topics
    suffix = uuid.uuid4().hex[:6]
    devices = (f"pi-a-{suffix}", f"pi-b-{suffix}")
    agents = [
        Agent(
            device_settings(
                tls_fleet, device, signing[1], tmp_path / device, telemetry_interval_s=0.005
            )
        )
        for device in devices
    ]
    publisher = TestPublisher(
        tls_fleet.broker.host, tls_fleet.broker.plain_port, topics, signing[0]
    )
    # the fake controller speaks on the loopback listener, as a controller next to its broker
    BrokerEndpoint(tls_fleet.broker.plain_url, credentials=tls_fleet.controller).configure(
        publisher.client
    )
    probes: list[MqttProbe] = []
    stop = threading.Event()
    load: list[threading.Thread] = []
    inferences = Counter[str]()
    golden = [x_batch(1, seed=i) for i in range(2)]
    publisher.start()
    try:
        watchers = {}
        for device in devices:
            p = probe(tls_fleet.broker.tls_endpoint(tls_fleet.controller)).connect()
            probes.append(p)
            watchers[device] = DeviceWatcher(p, topics, device)
        for agent in agents:
            agent.start()

        def serve(agent: Agent) -> None:
            x = x_batch(2, seed=5)
            while not stop.is_set():
                if agent.current_model is not None:
                    agent.infer(x)
                    inferences[agent.settings.device_id] += 1
                time.sleep(0.002)

        for agent in agents:
            t = threading.Thread(
                target=serve, args=(agent,), name=f"test-load-{agent.settings.device_id}"
            )
            t.start()
            load.append(t)

        started = time.monotonic()
        for serial in range(1, SWAPS + 1):
            model, version = (models.onnx_a, "a") if serial % 2 else (models.onnx_b, "b")
            for device in devices:
                manifest = publisher.manifest(
                    model, device_id=device, serial=serial, golden_inputs=golden, version=version
                )
                publisher.publish_desired(device, publisher.sign(manifest))
            for device in devices:
                watchers[device].wait_event(
                    EventType.SWAPPED, where=lambda e, s=serial: e.serial == s, timeout=30
                )
        swaps_s = time.monotonic() - started
        for p, device in zip(probes, devices, strict=True):
            # the flood still flows after the last swap, on the same session
            target = telemetry_seen(p, topics, device) + 20
            wait_until(
                lambda p=p, d=device, n=target: telemetry_seen(p, topics, d) >= n, timeout=10
            )
    finally:
        stop.set()
        for t in load:
            t.join(10)
        for agent in agents:
            agent.stop()
        for p in probes:
            p.close()
        publisher.stop()

    print(f"{SWAPS} swaps on each of 2 agents over TLS in {swaps_s:.1f}s")
    for agent, device in zip(agents, devices, strict=True):
        watcher = watchers[device]
        swapped = {e.serial for e in watcher.events() if e.type == EventType.SWAPPED}
        assert swapped == set(range(1, SWAPS + 1))
        telemetry = watcher.telemetry()
        print(f"{device}: {len(telemetry)} telemetry messages, {inferences[device]} inferences")
        assert len(telemetry) > 200  # a flood: many telemetry messages per swap
        assert inferences[device] > 100
        assert agent.session.connects == 1
        assert len(watcher.hellos()) == 1  # the agent says hello on every connect
        assert broker_sessions(tls_fleet.broker, device) == 1
        wait_until(lambda d=device: clean_disconnects(tls_fleet.broker, d) == 1, timeout=5)
    assert tls_errors(tls_fleet.broker) == []
