"""Fixtures for end-to-end tests: registered models built once, a fleet of real agent processes
and a real controller process per test, all on a mosquitto of the test's own."""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.shared import Topics
from support.agent_harness import AgentProcess, settings_dict, write_toml
from support.fleet import ControllerProcess, register_tiny_model
from support.mosquitto import MosquittoBroker, free_port
from support.mqtt import wait_until


@pytest.fixture(scope="session")
def model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A controller data dir holding tiny:1, tiny:2 (other weights) and tiny:3 (slow)."""
    data_dir = tmp_path_factory.mktemp("controller-template")
    register_tiny_model(data_dir, version="1", seed=1)
    register_tiny_model(data_dir, version="2", seed=2)
    register_tiny_model(
        data_dir, version="3", seed=1, slow=True, targets=("onnx-fp32", "onnx-int8")
    )
    return data_dir


class Fleet:
    """One test's world: broker, controller, agents."""

    def __init__(self, root: Path, template: Path, broker: MosquittoBroker | None) -> None:
        self.root = root
        self.broker = broker
        self.topics = Topics(f"edgefleet-e2e/{uuid.uuid4().hex[:8]}/v1")
        self.controller_dir = root / "controller"
        shutil.copytree(template, self.controller_dir)
        self.controller = ControllerProcess(
            self.controller_dir,
            broker_url=broker.url if broker else None,
            topic_root=self.topics.root,
        )
        self.agents: dict[str, AgentProcess] = {}
        self.http: dict[str, str] = {}
        self._traffic_stop = threading.Event()
        self._traffic: list[threading.Thread] = []
        self.requests_ok = 0
        self.requests_failed = 0

    @property
    def broker_url(self) -> str:
        if self.broker is not None:
            return self.broker.url
        return self.controller.get("/api/health")["broker_url"]

    def start_agent(
        self, device_id: str, *, broker_url: str | None = None, **overrides: object
    ) -> AgentProcess:
        """Start an agent on this fleet's broker (or ``broker_url``, e.g. a proxy to it)."""
        if device_id not in self.http:
            self.http[device_id] = f"127.0.0.1:{free_port()}"
        values = settings_dict(
            device_id=device_id,
            broker_url=broker_url or self.broker_url,
            topics=self.topics,
            key_path=self.controller_dir / "keys" / "signing.pub",
            data_dir=self.root / f"agent-{device_id}",
            http_bind=self.http[device_id],
            **overrides,
        )
        config = write_toml(self.root / f"{device_id}.toml", values)
        agent = AgentProcess(config, self.root / f"{device_id}.log").start()
        self.agents[device_id] = agent
        return agent

    def wait_devices(self, ids: list[str], timeout: float = 60) -> None:
        def known() -> bool:
            online = {d["id"] for d in self.controller.get("/api/devices") if d["online"]}
            return set(ids) <= online

        wait_until(known, timeout=timeout, interval=0.2)

    def rollout(
        self, version: str, *, expect: set[str], timeout: float = 120, **body: object
    ) -> dict:
        payload = {"model": "tiny", "version": version, **body}
        response = self.controller.api("POST", "/api/rollouts", json=payload)
        assert response.status_code == 201, response.text
        return self.wait_rollout(response.json()["id"], expect, timeout)

    def roll_out_to_new_agent(self, device_id: str, model: str, target: str = "onnx-int8") -> dict:
        """Start an onnxruntime agent ``device_id``, roll ``model:1`` out to it in one wave
        without soak, check it completed with ``target`` active; the device's swapped event."""
        self.start_agent(device_id, runtimes=["onnxruntime"])
        self.wait_devices([device_id])
        rollout = self.rollout(
            "1", model=model, expect={"completed", "paused", "rolled_back"}, waves="100%",
            policy={"soak_s": 0},
        )  # fmt: skip
        assert rollout["status"] == "completed", (rollout["reason"], rollout["devices"])
        (device,) = rollout["devices"]
        assert (device["state"], device["target"]) == ("active", target)
        events = self.controller.get(f"/api/devices/{device_id}/events")
        (swapped,) = [e for e in events if e["type"] == "swapped" and e["model_id"] == model]
        return swapped

    def wait_rollout(self, rollout_id: int, expect: set[str], timeout: float = 120) -> dict:
        state: dict = {}

        def done() -> bool:
            state.update(self.controller.get(f"/api/rollouts/{rollout_id}"))
            return state["status"] in expect

        try:
            wait_until(done, timeout=timeout, interval=0.3)
        except TimeoutError:
            raise AssertionError(
                f"rollout stuck: {state}\n{self.controller.log()[-3000:]}"
            ) from None
        return state

    def start_traffic(self, device_ids: list[str], rate_hz: float = 40) -> None:
        """Closed-loop local inference on each device's HTTP endpoint, as an app would."""
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)

        def drive(device_id: str) -> None:
            with httpx.Client(base_url=f"http://{self.http[device_id]}", timeout=10) as client:
                while not self._traffic_stop.wait(1 / rate_hz):
                    try:
                        r = client.post("/v1/infer", json={"inputs": {"x": x.tolist()}})
                        if r.status_code == 200:
                            self.requests_ok += 1
                        elif r.status_code != 503:  # 503: no model loaded yet
                            self.requests_failed += 1
                    except httpx.HTTPError:
                        pass

        for device_id in device_ids:
            thread = threading.Thread(target=drive, args=(device_id,), name=f"traffic-{device_id}")
            thread.start()
            self._traffic.append(thread)

    def close(self) -> None:
        self._traffic_stop.set()
        for thread in self._traffic:
            thread.join(15)
        for agent in self.agents.values():
            try:
                agent.terminate()
            except subprocess.TimeoutExpired:
                agent.kill()
        self.controller.stop()


@pytest.fixture
def fleet(tmp_path: Path, model_template: Path, own_broker: MosquittoBroker) -> Iterator[Fleet]:
    world = Fleet(tmp_path, model_template, own_broker)
    world.controller.start()
    yield world
    world.close()
