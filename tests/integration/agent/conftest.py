"""Fixtures for agent integration tests: tiny models (built once), a signing key, a test
publisher on the session broker, a watcher of everything the device says, agents in-process,
and a reader of the device's retained state as a controller connecting now would see it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.agent import Agent
from edgefleet.shared import DeviceState, Topics, decode
from support import agent_models
from support.agent_harness import DEVICE, DeviceWatcher, make_key, make_settings
from support.agent_models import BuiltModel
from support.mosquitto import MosquittoBroker
from support.mqtt import MqttProbe, wait_until
from support.publisher import TestPublisher


@dataclass(frozen=True)
class Models:
    onnx_a: BuiltModel
    onnx_b: BuiltModel
    fragile: BuiltModel
    multi: BuiltModel
    nan: BuiltModel
    tflite_add: BuiltModel
    tflite_int8: BuiltModel
    litert_torch: BuiltModel


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("models")
    return Models(
        onnx_a=agent_models.linear_classifier(d / "a.onnx", seed=1),
        onnx_b=agent_models.linear_classifier(d / "b.onnx", seed=2),
        fragile=agent_models.linear_classifier(d / "fragile.onnx", seed=3, fixed_batch=True),
        multi=agent_models.multi_input(d / "multi.onnx"),
        nan=agent_models.nan_model(d / "nan.onnx"),
        tflite_add=agent_models.tflite_add(d / "add.tflite"),
        tflite_int8=agent_models.tflite_int8_classifier(d / "int8.tflite"),
        litert_torch=agent_models.litert_torch_two_inputs(d / "converted.tflite"),
    )


@pytest.fixture
def signing(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    return make_key(tmp_path)


@pytest.fixture
def publisher(mosquitto: MosquittoBroker, topics: Topics, signing) -> Iterator[TestPublisher]:
    pub = TestPublisher(mosquitto.host, mosquitto.port, topics, signing[0]).start()
    yield pub
    pub.stop()


@pytest.fixture
def watcher(mosquitto: MosquittoBroker, topics: Topics) -> Iterator[DeviceWatcher]:
    probe = MqttProbe(mosquitto.host, mosquitto.port).connect()
    yield DeviceWatcher(probe, topics, DEVICE)
    probe.close()


AgentFactory = Callable[..., Agent]


@pytest.fixture
def start_agent(
    mosquitto: MosquittoBroker, topics: Topics, signing, tmp_path: Path
) -> Iterator[AgentFactory]:
    started: list[Agent] = []

    def factory(
        broker: MosquittoBroker | None = None, data_dir: Path | None = None, **overrides: object
    ) -> Agent:
        broker = broker or mosquitto
        settings = make_settings(
            device_id=overrides.pop("device_id", DEVICE),
            broker_url=broker.url,
            topics=topics,
            key_path=signing[1],
            data_dir=data_dir or tmp_path / "agent-data",
            **overrides,
        )
        agent = Agent(settings).start()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        agent.stop()
    # every thread an agent started has ended: nothing leaks into the next test
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("edgefleet-agent")],
        timeout=10,
    )


RetainedReader = Callable[..., DeviceState]


@pytest.fixture
def retained(mosquitto: MosquittoBroker, topics: Topics) -> RetainedReader:
    """``retained(where)``: the retained state of the device, read by a fresh subscriber, once
    it satisfies ``where`` (polled until ``timeout``; the last one read is in the error)."""

    def read(
        where: Callable[[DeviceState], bool] = lambda s: True,
        timeout: float = 20.0,
        broker: MosquittoBroker | None = None,
    ) -> DeviceState:
        broker = broker or mosquitto
        deadline = time.monotonic() + timeout
        state: DeviceState | None = None
        while time.monotonic() < deadline:
            with MqttProbe(broker.host, broker.port) as probe:
                probe.subscribe(topics.state(DEVICE))
                try:
                    item = probe.wait_for(lambda r: r.retain, timeout=5)
                except TimeoutError:  # nothing retained yet: the agent has not connected
                    continue
            state = decode(item.payload, DeviceState)
            if where(state):
                return state
            time.sleep(0.05)  # poll interval of the condition, as in wait_until
        raise AssertionError(f"the retained state never matched within {timeout}s: {state}")

    return read
