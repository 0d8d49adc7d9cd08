"""Fixtures for dashboard, metrics and ingest tests: a real controller process on the session's
mosquitto under a topic root of its own, and an MQTT client to play the devices."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.fleet import ControllerProcess
from support.mosquitto import MosquittoBroker
from support.mqtt import MqttProbe


@pytest.fixture
def start_controller(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> Iterator[Callable[..., ControllerProcess]]:
    """Start a controller on the session broker under a fresh topic root, with env overrides."""
    started: list[ControllerProcess] = []

    def start(**env: str) -> ControllerProcess:
        root = f"edgefleet-dash/{uuid.uuid4().hex[:10]}/v1"
        controller = ControllerProcess(
            tmp_path / f"controller-{len(started)}",
            broker_url=mosquitto.url,
            topic_root=root,
            extra_env={"EDGEFLEET_SHARE_GROUP": f"dash{uuid.uuid4().hex[:6]}", **env},
        )
        started.append(controller)
        return controller.start()

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def probe(mosquitto: MosquittoBroker) -> Iterator[MqttProbe]:
    with MqttProbe(mosquitto.host, mosquitto.port) as client:
        yield client
