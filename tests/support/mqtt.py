"""A small paho-mqtt 2.x client for tests: publish, subscribe, wait for messages by condition."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttProbe:
    """A connected paho client that records every message it receives."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTProtocolVersion.MQTTv311,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:10]}",
            protocol=protocol,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.connect_reason: object = None
        self._subacked: set[int] = set()
        self._subacks = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.host, self.port = host, port

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connect_reason = reason_code
        if not reason_code.is_failure:
            self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        item = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos)
        with self._lock:
            self.received.append(item)
        self.messages.put(item)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._subacks:
            self._subacked.add(mid)
            self._subacks.notify_all()

    def connect(self, timeout: float = 10.0) -> MqttProbe:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise TimeoutError(f"no CONNACK within {timeout}s (reason {self.connect_reason})")
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        with self._subacks:
            if not self._subacks.wait_for(lambda: mid in self._subacked, timeout):
                raise TimeoutError(f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            info.wait_for_publish(10)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._lock:
                    seen = [(r.topic, len(r.payload)) for r in self.received[-10:]]
                raise TimeoutError(f"no matching message within {timeout}s; last seen: {seen}")
            try:
                item = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(item):
                return item

    def count(self, predicate: Callable[[Received], bool]) -> int:
        with self._lock:
            return sum(1 for r in self.received if predicate(r))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds or ``timeout`` passes (then raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
