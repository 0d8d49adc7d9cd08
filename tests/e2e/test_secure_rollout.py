"""Enroll -> bundle -> agent run -> rollout, over TLS with per-device identities and the ACL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from support.fleet import ControllerProcess, register_tiny_model
from support.mosquitto import free_port
from support.mqtt import wait_until
from support.secure_broker import broker_from_cli, run_edgefleet

pytestmark = pytest.mark.slow
edgefleet = run_edgefleet


def test_enrolled_agents_take_a_rollout_over_tls_under_the_acl(tmp_path, monkeypatch):
    data = tmp_path / "controller"
    root = f"edgefleet-e2e/{uuid.uuid4().hex[:8]}/v1"
    broker = broker_from_cli(data, tmp_path / "broker")
    # The broker the admin password may go to, as an operator configures it.
    monkeypatch.setenv("EDGEFLEET_BROKER_ADMIN_URL", broker.plain_url)
    broker.start()
    agents: list[subprocess.Popen[bytes]] = []
    controller = None
    try:
        admin = ["--admin-url", broker.plain_url, "--topic-root", root, "--data-dir", str(data)]
        edgefleet("device", "controller-identity", *admin)
        register_tiny_model(data, version="1", seed=1, targets=("onnx-fp32", "onnx-int8"))
        # The controller finds its broker identity and the pinned CA in its data dir.
        controller = ControllerProcess(data, broker_url=broker.tls_url, topic_root=root).start()
        for device_id in ("pi-secure-1", "pi-secure-2"):
            bundle = tmp_path / device_id
            edgefleet(
                "device", "enroll", device_id, "--labels", "site=secure", "--out", str(bundle),
                "--broker-url", broker.tls_url, *admin,
            )  # fmt: skip
            env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
            env["EDGEFLEET_AGENT_HTTP_BIND"] = f"127.0.0.1:{free_port()}"
            env["EDGEFLEET_AGENT_DATA_DIR"] = str(tmp_path / f"{device_id}-data")
            log = (tmp_path / f"{device_id}.log").open("wb")
            agents.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "edgefleet.agent.cli",
                        "run",
                        "--config",
                        str(bundle / "agent.toml"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )

        def online() -> bool:
            return {d["id"] for d in controller.get("/api/devices") if d["online"]} == {
                "pi-secure-1",
                "pi-secure-2",
            }

        wait_until(online, timeout=60, interval=0.3)
        response = controller.api(
            "POST", "/api/rollouts",
            json={"model": "tiny", "version": "1", "selector": "site=secure", "waves": "1,100%",
                  "policy": {"soak_s": 0.5}},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        rollout_id = response.json()["id"]
        wait_until(
            lambda: controller.get(f"/api/rollouts/{rollout_id}")["status"] != "running",
            timeout=90,
            interval=0.3,
        )
        rollout = controller.get(f"/api/rollouts/{rollout_id}")
        assert rollout["status"] == "completed", rollout
        assert {d["state"] for d in rollout["devices"]} == {"active"}
        assert controller.get("/api/health")["broker_url"].startswith("mqtts://")
    finally:
        for agent in agents:
            agent.terminate()
            agent.wait(15)
        if controller is not None:
            controller.stop()
        broker.kill()
