"""The controller's MQTT receive path reads its socket in large pieces (``BufferedSocket``):
every message of a burst arrives, whole and in order, over plain TCP and over TLS, with far
fewer reads of the socket than messages."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.controller.mqtt.bridge import BridgeOptions, BufferedSocket, MqttBridge
from edgefleet.controller.security.dynsec import DynsecAdmin
from edgefleet.controller.security.endpoint import BrokerEndpoint
from edgefleet.controller.security.identities import BrokerIdentities
from edgefleet.shared import Topics
from support.secure_broker import SecureBroker


class CountingSocket:
    """A socket that counts its receives (the system calls paho's reads cost)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.receives = 0

    def recv(self, size: int) -> bytes:
        self.receives += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_buffered_socket_hands_out_what_was_asked_in_order() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        counting = CountingSocket(right)
        buffered = BufferedSocket(counting, size=64)
        with pytest.raises(BlockingIOError):
            buffered.recv(1)
        data = bytes(range(200))
        left.sendall(data)
        got = b""
        for size in (1, 1, 3, 50, 1, 200):  # paho's way: a byte, a byte, then a body
            got += buffered.recv(size)
        while buffered.pending():
            got += buffered.recv(7)
        while len(got) < len(data):
            with contextlib.suppress(BlockingIOError):  # one socket read per turn: see below
                got += buffered.recv(1)
        assert got == data
        assert counting.receives <= len(data) // 64 + 3, "reads the socket a piece at a time"
        assert buffered.pending() == 0
        left.close()
        with pytest.raises(BlockingIOError):
            buffered.recv(1)  # the end of the turn that read the last piece
        assert buffered.recv(1) == b""  # the end of the stream reaches paho as it is


def test_one_socket_read_per_turn_of_the_event_loop() -> None:
    """Once a read is handed out the next receive would block, though the socket holds more:
    the turn ends (paho keeps its partial packet) and the next turn reads again. A reader that
    refilled at once never left a connection that does not drain."""
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        buffered = BufferedSocket(right, size=64)
        left.sendall(bytes(range(200)))
        assert buffered.recv(60) == bytes(range(60))  # the turn's one read: 64 bytes held
        assert buffered.recv(10) == bytes(range(60, 64))
        assert buffered.pending() == 0
        with pytest.raises(BlockingIOError):
            buffered.recv(10)  # 136 bytes wait in the socket, for the next turn
        assert buffered.recv(10) == bytes(range(64, 74))  # the next turn's read
        assert buffered.pending() == 54


def test_nothing_stays_pending_once_the_socket_is_closed() -> None:
    left, right = socket.socketpair()
    with left:
        buffered = BufferedSocket(right, size=64)
        left.sendall(b"y" * 50)
        assert buffered.recv(1) == b"y"
        assert buffered.pending() == 49
        buffered.close()  # paho closes on a protocol error or a lost broker, data unread
        assert buffered.pending() == 0


def test_a_large_request_bypasses_the_buffer() -> None:
    left, right = socket.socketpair()
    with left, right:
        buffered = BufferedSocket(right, size=16)
        left.sendall(b"x" * 10)
        assert buffered.recv(100) == b"x" * 10
        assert buffered.pending() == 0


def _publish(host: str, port: int, messages: list[tuple[str, bytes]], **tls: object) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    if tls:
        client.username_pw_set(str(tls["username"]), str(tls["password"]))
        client.tls_set(ca_certs=str(tls["ca"]))
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _burst(topics: Topics, count: int, devices: int) -> list[tuple[str, bytes]]:
    """Messages of many sizes, a few larger than the receive buffer, each naming its place."""
    out = []
    for i in range(count):
        size = 300_000 if i % 997 == 0 else (i * 37) % 3000
        out.append((topics.telemetry(f"dev-{i % devices}"), f"{i:08d}".encode() + b"p" * size))
    return out


def _telemetry_bridge(
    endpoint: BrokerEndpoint,
    topics: Topics,
    on_message: Callable[[str, bytes], None],
    on_connect: Callable[[], Awaitable[None]],
    *,
    qos: int,
    buffered: bool,
) -> MqttBridge:
    """A bridge subscribed to every device's telemetry, as an ingest worker's is."""
    return MqttBridge(
        BridgeOptions(
            endpoint=endpoint,
            subscriptions=[(f"{topics.root}/devices/+/telemetry", qos)],
            buffered_receive=buffered,
        ),
        on_message=on_message,
        on_connect=on_connect,
    )


async def _receive(
    endpoint: BrokerEndpoint,
    topics: Topics,
    send: list[tuple[str, bytes]],
    publish: object,
    *,
    buffered: bool = True,
) -> tuple[list[tuple[str, bytes]], list[object]]:
    received: list[tuple[str, bytes]] = []
    sockets: list[object] = []
    done = asyncio.Event()
    subscribed = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append((topic, payload))
        if len(received) == len(send):
            done.set()

    async def on_connect() -> None:
        client = bridge._client
        assert client is not None
        sockets.append(client._client.socket())  # the paho client's socket
        subscribed.set()

    bridge = _telemetry_bridge(endpoint, topics, on_message, on_connect, qos=1, buffered=buffered)
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(subscribed.wait(), 20)
        await asyncio.to_thread(publish)  # type: ignore[arg-type]
        await asyncio.wait_for(done.wait(), 120)
    finally:
        bridge.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return received, sockets


def test_the_main_process_bridge_reads_paho_s_own_way(mosquitto, topics) -> None:
    """Only ingest workers buffer: the main process's bridge keeps paho's socket."""
    send = _burst(topics, 50, devices=5)
    endpoint = BrokerEndpoint(mosquitto.url)
    received, sockets = asyncio.run(
        _receive(
            endpoint, topics, send, lambda: _publish(mosquitto.host, mosquitto.port, send),
            buffered=False,
        )
    )  # fmt: skip
    assert [isinstance(s, BufferedSocket) for s in sockets] == [False]
    assert received == send


def test_a_burst_arrives_whole_and_in_order_over_plain_tcp(mosquitto, topics) -> None:
    send = _burst(topics, 3000, devices=50)
    endpoint = BrokerEndpoint(mosquitto.url)
    received, sockets = asyncio.run(
        _receive(endpoint, topics, send, lambda: _publish(mosquitto.host, mosquitto.port, send))
    )
    assert [type(s) for s in sockets] == [BufferedSocket]
    assert received == send


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = SecureBroker(tmp_path_factory.mktemp("tls-broker"))
    broker.start()
    yield broker
    broker.kill()


def test_a_burst_arrives_whole_and_in_order_over_tls(tls_broker: SecureBroker) -> None:
    topics = Topics(root=f"edgefleet-test/{uuid.uuid4().hex[:12]}/v1")
    with DynsecAdmin(tls_broker.admin_endpoint()) as admin:
        identities = BrokerIdentities(admin, topics)
        credentials = identities.setup_controller()
        device = identities.add_device("dev-0")
    endpoint = tls_broker.tls_endpoint(credentials)
    send = _burst(topics, 1500, devices=1)

    def publish() -> None:  # as the device, on its own telemetry topic
        _publish(
            "localhost", tls_broker.tls_port, send,
            username=device.credentials.username, password=device.credentials.password,
            ca=tls_broker.pki.ca_cert,
        )  # fmt: skip

    received, sockets = asyncio.run(_receive(endpoint, topics, send, publish))
    assert [type(s) for s in sockets] == [BufferedSocket]
    assert received == send


def _flood(host: str, port: int, topic: str, seconds: float) -> None:
    """Publish as fast as paho can for ``seconds`` (QoS 0: nothing waits for an answer)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:6]}")
    client.connect(host, port)
    client.loop_start()
    payload = b"f" * 400  # a telemetry window's size
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            client.publish(topic, payload, qos=0)
    client.disconnect()
    client.loop_stop()


def test_a_connection_that_never_drains_leaves_the_loop_its_turns(mosquitto, topics) -> None:
    """Publishers faster than the subscriber keep its socket full for the whole flood; the
    other tasks of its event loop (an ingest worker's writer, its keepalive) still run."""
    seconds = 4.0

    def on_message(topic: str, payload: bytes) -> None:
        end = time.perf_counter() + 0.0003  # a slow handler: the socket never drains
        while time.perf_counter() < end:
            pass

    async def main() -> tuple[float, int]:
        connected = asyncio.Event()

        async def on_connect() -> None:
            connected.set()

        endpoint = BrokerEndpoint(mosquitto.url)
        bridge = _telemetry_bridge(endpoint, topics, on_message, on_connect, qos=0, buffered=True)
        task = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(connected.wait(), 20)
            flood = multiprocessing.get_context("spawn").Process(
                target=_flood,
                args=(mosquitto.host, mosquitto.port, topics.telemetry("dev-0"), seconds),
            )
            flood.start()
            longest, ticks = 0.0, 0
            last = time.monotonic()
            while flood.is_alive():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                longest, last, ticks = max(longest, now - last), now, ticks + 1
            flood.join()
            return longest, ticks
        finally:
            bridge.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    longest, ticks = asyncio.run(main())
    assert ticks > 20, "the flood ran"
    assert longest < 1.0, f"the reader held the event loop for {longest:.2f} s"
