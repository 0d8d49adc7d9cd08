"""The controller's one MQTT connection (aiomqtt), reconnecting with capped, jittered backoff.

Concurrency: runs as the asyncio task ``mqtt-bridge``. Incoming messages are handed to a
synchronous ``on_message`` callback that must only enqueue; ``on_connect`` runs after every
CONNACK (subscriptions are made again, unpublished desired state is re-sent).

Each message goes to ``on_message`` as paho reads it, on the event loop's thread (aiomqtt reads
the socket from a loop reader), instead of through aiomqtt's message wrapper, queue and async
iterator: that path cost as much per message as paho itself and halved the rate at which the
controller could take telemetry (``bench/ingest.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.security.endpoint import BrokerEndpoint

log = logging.getLogger(__name__)


# CONNACK codes of a broker that refuses the protocol version (MQTT 5: 0x84; 3.1.1: 1).
UNSUPPORTED_PROTOCOL = frozenset({132, 1})


class BrokerUnavailableError(ControllerError):
    """The broker connection is down; the publish can be retried later."""


@dataclass(frozen=True)
class BridgeOptions:
    endpoint: BrokerEndpoint  # URL, credentials and the pinned CA
    subscriptions: Sequence[tuple[str, int]]
    client_id: str | None = None
    keepalive: int = 30
    mqtt5: bool = True  # falls back to 3.1.1 by itself when the broker refuses MQTT 5
    backoff_min_s: float = 0.2
    backoff_max_s: float = 30.0
    # Read the socket through a BufferedSocket: for a connection that only takes telemetry (an
    # ingest worker). Off for the main process: there packets read together are handled in one
    # turn of the event loop, so a burst of chunk requests from one device coalesces into one
    # lookup instead of each being answered (and counted) on its own.
    buffered_receive: bool = False


RECEIVE_BUFFER = 64 * 1024  # about 150 telemetry windows: a turn of the loop handles that many


class BufferedSocket:
    """A paho ``SocketLike`` that reads its socket in large pieces and hands paho the few bytes
    it asks for from memory.

    paho reads each packet in three receives or more (its first byte, each byte of its length,
    then its body): three system calls, and one trip through the event loop, per telemetry
    window. ``pending`` counts what is held here (and in a TLS socket's own buffer), the way
    paho's websocket and TLS sockets say they hold data a ``select`` cannot see: aiomqtt's
    reader reads packets until nothing is pending, so nothing waits here unseen.

    One read of the socket per turn of the event loop: once what it read is handed out, the
    next receive says "would block" (as the socket does when it is empty) and the turn ends;
    paho keeps the packet it was reading and the loop calls the reader again, the socket
    still being readable. Refilling at once instead, a connection that never drains (a
    subscriber slower than its publishers) kept the reader in its loop for good: the worker
    wrote nothing, answered no keepalive, and its queue overflowed.
    """

    def __init__(self, sock: Any, size: int = RECEIVE_BUFFER) -> None:
        self._sock = sock
        self._size = size
        self._held = b""
        self._at = 0
        self._read_this_turn = False

    def recv(self, buffer_size: int) -> bytes:
        if self._at >= len(self._held):
            inner = getattr(self._sock, "pending", None)
            if self._read_this_turn and not (inner is not None and inner()):
                # (a TLS socket's decrypted bytes are no select's wake-up: those are read now)
                self._read_this_turn = False
                raise BlockingIOError("this turn's read is handed out")
            try:
                data = self._sock.recv(max(buffer_size, self._size))
            except (BlockingIOError, ssl.SSLWantReadError):
                self._read_this_turn = False
                raise
            self._read_this_turn = True
            if len(data) <= buffer_size:
                return bytes(data)  # (b"" at the end of the stream)
            self._held, self._at = data, 0
        start = self._at
        self._at = min(len(self._held), start + buffer_size)
        return self._held[start : self._at]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._held) - self._at + (inner() if inner is not None else 0)

    def send(self, buffer: bytes | bytearray) -> int:
        return int(self._sock.send(buffer))

    def close(self) -> None:
        # What is held belongs to the connection that ends: nothing may stay pending, or
        # aiomqtt's reader would call paho (which reads no closed socket) forever.
        self._held, self._at = b"", 0
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:  # the rest of the socket's interface (TLS too)
        return getattr(self._sock, name)


class _DispatchingClient(aiomqtt.Client):
    """aiomqtt's client, handing each incoming message straight to ``dispatch``, reading its
    socket through a :class:`BufferedSocket` when ``buffered``."""

    def __init__(
        self,
        *args: Any,
        dispatch: Callable[[str, bytes], None],
        buffered: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._dispatch = dispatch
        self._buffered = buffered

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:  # aiomqtt's hook
        # paho reads ``client._sock``; its socket-open callback is the one moment to wrap it
        if (
            self._buffered
            and getattr(client, "_sock", None) is sock
            and not isinstance(sock, BufferedSocket)
        ):
            sock = client._sock = BufferedSocket(sock)
        super()._on_socket_open(client, userdata, sock)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:  # aiomqtt's hook
        try:
            topic = message.topic  # paho decodes the topic bytes here
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8")
            return
        try:
            self._dispatch(topic, message.payload)
        except Exception:  # a handler bug must not take the connection down
            log.exception("message handler failed on %s", topic[:300])


class MqttBridge:
    """Keeps one connection up, feeds messages to the service, publishes on its behalf."""

    def __init__(
        self,
        options: BridgeOptions,
        on_message: Callable[[str, bytes], None],
        on_connect: Callable[[], Awaitable[None]],
    ) -> None:
        self.options = options
        self.url = options.endpoint.url
        self._tls = options.endpoint.ssl_context()  # fails at start, not at each reconnect
        self._on_message = on_message
        self._on_connect = on_connect
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self._stopping = False
        self.mqtt5 = options.mqtt5

    def _make_client(self) -> aiomqtt.Client:
        endpoint = self.options.endpoint
        credentials = endpoint.credentials
        return _DispatchingClient(
            endpoint.host,
            endpoint.port,
            username=credentials.username if credentials else None,
            password=credentials.password if credentials else None,
            identifier=self.options.client_id or f"edgefleet-controller-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5 if self.mqtt5 else aiomqtt.ProtocolVersion.V311,
            keepalive=self.options.keepalive,
            tls_context=self._tls,
            max_inflight_messages=1000,
            max_queued_incoming_messages=0,
            timeout=10,
            dispatch=self._on_message,
            buffered=self.options.buffered_receive,
        )

    async def run(self) -> None:
        """Connect, subscribe and dispatch until cancelled, reconnecting with backoff."""
        attempt = 0
        while not self._stopping:
            try:
                async with self._make_client() as client:
                    self._client = client
                    for topic, qos in self.options.subscriptions:
                        await client.subscribe(topic, qos=qos)
                    attempt = 0
                    self.connects += 1
                    self.connected.set()
                    log.info("connected to broker %s (connect #%d)", self.url, self.connects)
                    await self._on_connect()
                    # messages go to the handler as they are read; this ends (raising) when the
                    # connection does
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttCodeError as e:
                if self.mqtt5 and getattr(e.rc, "value", e.rc) in UNSUPPORTED_PROTOCOL:
                    log.info("broker %s does not speak MQTT 5; using 3.1.1", self.url)
                    self.mqtt5 = False
                    continue
                log.warning("broker %s unavailable: %s", self.url, e)
            except aiomqtt.MqttError as e:
                log.warning("broker %s unavailable: %s", self.url, e)
            finally:
                self._client = None
                self.connected.clear()
            attempt += 1
            window = min(
                self.options.backoff_max_s, self.options.backoff_min_s * 1.5 ** min(10, attempt)
            )
            await asyncio.sleep(random.uniform(window / 2, window))  # noqa: S311 - jitter, not crypto

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's acknowledgement.

        Raises:
            BrokerUnavailableError: not connected, or the publish failed.
        """
        client = self._client
        if client is None:
            raise BrokerUnavailableError("not connected to the broker")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=30)
        except aiomqtt.MqttError as e:
            raise BrokerUnavailableError(f"publish to {topic} failed: {e}") from e

    def stop(self) -> None:
        self._stopping = True
