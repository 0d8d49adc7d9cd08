"""Driving an agent in tests: keys, fast settings, a subprocess runner and an event probe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.settings import AgentSettings
from edgefleet.shared import (
    ArtifactRef,
    DeviceState,
    Event,
    EventType,
    GoldenSet,
    Hello,
    Manifest,
    Telemetry,
    Topics,
    WireFormatError,
    decode,
    generate_signing_key,
    save_public_key,
)
from edgefleet.shared.signing import public_key_of
from support.mqtt import MqttProbe, Received

FAST = {
    "telemetry_interval_s": 0.5,
    "keepalive_s": 5,
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.5,
    "chunk_timeout_s": 1.0,
    "fetch_timeout_s": 30.0,
    "fetch_retry_min_s": 0.05,
    "fetch_retry_max_s": 0.5,
    "health_check_interval_s": 0.05,
    "warmup_runs": 1,
    "validation_timed_runs": 3,
    "fetch_window_chunks": 4,
}


def make_key(directory: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = generate_signing_key()
    path = directory / "controller.pub.pem"
    save_public_key(public_key_of(key), path)
    return key, path


def settings_dict(
    *,
    device_id: str,
    broker_url: str,
    topics: Topics,
    key_path: Path,
    data_dir: Path,
    **overrides: object,
) -> dict[str, object]:
    values: dict[str, object] = {
        "device_id": device_id,
        "broker_url": broker_url,
        "topic_root": topics.root,
        "controller_key": str(key_path),
        "data_dir": str(data_dir),
        "http_bind": "127.0.0.1:0",
        **FAST,
    }
    values.update(overrides)
    return values


def make_settings(**kwargs: object) -> AgentSettings:
    return AgentSettings(**settings_dict(**kwargs))  # type: ignore[arg-type]


def write_toml(path: Path, values: dict[str, object]) -> Path:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class AgentProcess:
    """``edgefleet-agent run --config PATH`` as a child process, killable like a power cut."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=agent_env(),
        )
        log.close()
        return self

    kill_wait_s = 10.0
    stop_wait_s = 15.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(self.kill_wait_s)

    def terminate(self, timeout: float | None = None) -> int:
        timeout = self.stop_wait_s if timeout is None else timeout
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class DeviceWatcher:
    """Subscribes to everything a device publishes and decodes it."""

    def __init__(self, probe: MqttProbe, topics: Topics, device_id: str) -> None:
        self.probe = probe
        self.topics = topics
        self.device_id = device_id
        for topic in (
            topics.events(device_id),
            topics.state(device_id),
            topics.hello(device_id),
            topics.telemetry(device_id),
        ):
            probe.subscribe(topic)

    def events(self) -> list[Event]:
        found = []
        for item in list(self.probe.received):
            if item.topic == self.topics.events(self.device_id):
                found.append(decode(item.payload, Event))
        return found

    def wait_event(
        self,
        kind: EventType,
        timeout: float = 20.0,
        where: Callable[[Event], bool] = lambda e: True,
    ) -> Event:
        topic = self.topics.events(self.device_id)
        for event in self.events():
            if event.type == kind and where(event):
                return event

        def match(item: Received) -> bool:
            if item.topic != topic:
                return False
            event = decode(item.payload, Event)
            return event.type == kind and where(event)

        return decode(self.probe.wait_for(match, timeout).payload, Event)

    def states(self) -> list[DeviceState]:
        """Every state the device published so far, in the order they arrived."""
        topic = self.topics.state(self.device_id)
        received = list(self.probe.received)
        return [decode(i.payload, DeviceState) for i in received if i.topic == topic]

    def wait_state(
        self, where: Callable[[DeviceState], bool], timeout: float = 20.0
    ) -> DeviceState:
        topic = self.topics.state(self.device_id)
        for item in list(self.probe.received):
            if item.topic == topic and where(decode(item.payload, DeviceState)):
                return decode(item.payload, DeviceState)

        def match(item: Received) -> bool:
            return item.topic == topic and where(decode(item.payload, DeviceState))

        return decode(self.probe.wait_for(match, timeout).payload, DeviceState)

    def wait_telemetry(
        self, where: Callable[[Telemetry], bool], timeout: float = 20.0
    ) -> Telemetry:
        topic = self.topics.telemetry(self.device_id)

        def match(item: Received) -> bool:
            return item.topic == topic and where(decode(item.payload, Telemetry))

        return decode(self.probe.wait_for(match, timeout).payload, Telemetry)

    def telemetry(self) -> list[Telemetry]:
        topic = self.topics.telemetry(self.device_id)
        return [decode(i.payload, Telemetry) for i in list(self.probe.received) if i.topic == topic]

    def hellos(self) -> list[Hello]:
        return [
            decode(i.payload, Hello)
            for i in list(self.probe.received)
            if i.topic == self.topics.hello(self.device_id)
        ]


def safe_decode_events(payloads: list[bytes]) -> list[Event]:
    out = []
    for payload in payloads:
        try:
            out.append(decode(payload, Event))
        except WireFormatError:
            continue
    return out


DEVICE = "dev-1"


def x_batch(n: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for the linear classifier models: x float32 [n, 4]."""
    return {"x": np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)}


def manifest_for(model, golden: GoldenSet | None, budget: float = 1000.0) -> Manifest:
    return Manifest(
        device_id="dev-1",
        model_id="m",
        version="1",
        serial=1,
        target=model.target,
        runtime="litert" if model.target.startswith("tflite") else "onnxruntime",
        artifact=ArtifactRef(
            sha256="0" * 64, size=1, chunk_size=1, chunk_sha256=("0" * 64,), http_url="http://x"
        ),
        signature=model.signature,
        golden=golden,
        latency_budget_ms=budget,
        created_at=datetime.now(UTC) - timedelta(minutes=1),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
