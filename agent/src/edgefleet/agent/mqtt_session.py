"""The agent's MQTT session: paho-mqtt 2.x driven by one named network thread.

Concurrency: this thread runs paho's ``loop()``; it reconnects with capped, jittered
exponential backoff and re-subscribes on every CONNACK. Callbacks never block: they hand
payloads to the handlers given at construction, which only enqueue. Publishing is safe from
any thread: other threads only queue packets, and only the network thread reads or writes
the socket (OpenSSL forbids two threads in one TLS connection at once).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.settings import AgentSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]

_DISCONNECT_FLUSH_S = 2.0


def _written_by_network_thread(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Paho's write hook, left empty on purpose: queuing a packet already wakes ``loop()``
    (paho's socket pair), whose select then writes it on the network thread."""


class MqttSession:
    """One persistent connection to the broker for one device."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        on_message: MessageHandler,
        on_connected: Callable[[], None],
        will: tuple[str, bytes],
        outbox_size: int = 1000,
    ) -> None:
        self.settings = settings
        self._on_message_handler = on_message
        self._on_connected_handler = on_connected
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-agent-{settings.device_id}-{uuid.uuid4().hex[:6]}",
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.broker_tls:
            self._client.tls_set(
                ca_certs=str(settings.tls_ca_file) if settings.tls_ca_file else None,
                certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
                keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        # Driven by loop() rather than loop_start(), paho writes a packet on the thread that
        # queues it (publish, subscribe, disconnect), racing this network thread on one
        # SSLSocket: broker-side "bad record mac" / "internal error" alerts, a dropped session
        # and at worst heap corruption. With a write hook registered, paho only queues and
        # wakes loop(), which does every socket write on the network thread.
        self._client.on_socket_register_write = _written_by_network_thread
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, floor_s=0.05)
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}
        self._suback = threading.Condition(self._lock)
        self._acked: set[int] = set()
        self._outbox: deque[tuple[str, bytes, int, bool]] = deque(maxlen=outbox_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connects = 0
        self.last_refusal: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"edgefleet-agent-mqtt-{self.settings.device_id}", daemon=True
        )
        self._thread.start()

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Publish ``final`` (topic, payload; retained, QoS 1) if connected, then disconnect.

        The wait for its acknowledgement ends when the connection does: a broker that goes
        away as the agent stops (the host shutting down) would otherwise hold the stop for the
        whole ``timeout``; the broker then publishes the will instead."""
        if final is not None and self.connected.is_set():
            info = self._client.publish(final[0], final[1], qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and self.connected.is_set():
                if time.monotonic() >= deadline:
                    break
                try:
                    info.wait_for_publish(0.05)
                except (RuntimeError, ValueError):
                    break  # not queued: no connection
            if not info.is_published():
                log.warning("final state was not delivered before shutdown")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)  # the network thread sends DISCONNECT on its way out
        self.connected.clear()

    def _run(self) -> None:
        host, port = self.settings.broker_host, self.settings.broker_port
        socket_open = False
        while not self._stop.is_set():
            if not socket_open:
                try:
                    self._client.connect(host, port, keepalive=self.settings.keepalive_s)
                    socket_open = True
                except (OSError, ssl.SSLError) as e:
                    delay = self._backoff.next_delay()
                    log.info("broker %s:%s unreachable (%s); retry in %.2fs", host, port, e, delay)
                    self._stop.wait(delay)
                    continue
            rc = self._client.loop(timeout=0.2)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not self._stop.is_set():
                socket_open = False
                self.connected.clear()
                delay = self._backoff.next_delay()
                log.info("connection lost (%s); reconnect in %.2fs", rc, delay)
                self._stop.wait(delay)
        if socket_open:
            self._disconnect(_DISCONNECT_FLUSH_S)

    def _disconnect(self, timeout: float) -> None:
        """Send DISCONNECT from this thread and run the loop until it is written (the broker
        then keeps the final state rather than publishing the will) or ``timeout`` passes."""
        if self._client.disconnect() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        deadline = time.monotonic() + timeout
        while self._client.socket() is not None and time.monotonic() < deadline:
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # -- paho callbacks (network thread; must not block) ----------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_refusal = str(reason)
            log.error("broker refused the connection: %s", reason)
            return
        self._backoff.reset()
        self.connects += 1
        with self._lock:
            topics = list(self._subscriptions.items())
            pending = list(self._outbox)
            self._outbox.clear()
        for topic, qos in topics:
            client.subscribe(topic, qos)
        self.connected.set()
        for topic, payload, qos, retain in pending:
            client.publish(topic, payload, qos=qos, retain=retain)
        try:
            self._on_connected_handler()
        except Exception:
            log.exception("on-connect handler failed")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._on_message_handler(message.topic, bytes(message.payload))
        except Exception:
            log.exception("dropping a message on %s that could not be handled", message.topic)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        with self._lock:
            self._acked.add(mid)
            self._suback.notify_all()

    # -- operations (any thread) --------------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1, timeout: float | None = None) -> bool:
        """Subscribe now (if connected) and after every reconnect.

        With ``timeout``, wait for the broker's SUBACK; return whether it came.
        """
        with self._lock:
            self._subscriptions[topic] = qos
        if not self.connected.is_set():
            return False
        result, mid = self._client.subscribe(topic, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        if timeout is None:
            return True
        with self._lock:
            acked = self._suback.wait_for(lambda: mid in self._acked, timeout)
            self._acked.discard(mid)
            return acked

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subscriptions.pop(topic, None)
        if self.connected.is_set():
            self._client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; QoS 1 messages wait in a bounded outbox while the broker is away."""
        if self.connected.is_set():
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or qos == 0:
                return
        if qos > 0:
            with self._lock:
                self._outbox.append((topic, payload, qos, retain))
