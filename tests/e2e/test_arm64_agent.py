"""The agent on emulated Raspberry Pis: a Pi 4 (Cortex-A72) and a Pi 5 (Cortex-A76).

``edgefleet-agent[onnx,litert]`` is installed from this tree's wheels into an arm64 Debian root
(``support.arm64``) and run there under qemu-user with the board's CPU model, against a real
controller and mosquitto on the host. Emulation is 300-1000x slower than the host for float
kernels: these tests judge correctness, with generous timeouts, never speed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from edgefleet.shared.manifest import GoldenSet
from support import arm64, arm64_install
from support.agent_harness import FAST, settings_dict, write_toml
from support.arm64 import CPU_MODELS, QEMU, Arm64Root
from support.arm64_install import AgentVenv, Arm64AgentProcess, aarch64_requirements
from support.mosquitto import free_port
from support.mqtt import wait_until

if TYPE_CHECKING:
    from edgefleet.controller.registry.records import VersionRecord

# The session fixtures used here (pytest finds fixtures among a module's names).
arm64_root = arm64.arm64_root
agent_wheels = arm64_install.agent_wheels
arm64_agent = arm64_install.arm64_agent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ENDED = {"completed", "paused", "rolled_back", "aborted"}
# Emulated agents: the fast test settings, with room for a CPU 300-1000x slower than the host's.
EMULATED = {
    **FAST,
    "telemetry_interval_s": 2.0,
    "keepalive_s": 30,
    "chunk_timeout_s": 20.0,
    "fetch_timeout_s": 300.0,
}
HOST_P95_FLOOR_MS = 2.0


def _heavy_module(seed: int, layers: int) -> Any:
    """A classifier (16 -> 4) with a compute-bound tail: ``layers`` passes of one shared
    384x384 linear layer over 16 rows per sample. Every pass contributes to the output (scaled
    down), so no converter can fold it away, and the artifact stays small (shared weights)."""
    import torch
    from torch import nn

    class Heavy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
            self.burn = nn.Linear(384, 384)
            nn.init.orthogonal_(self.burn.weight)  # tanh(W h) neither vanishes nor explodes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.repeat(1, 24).unsqueeze(1).repeat(1, 16, 1)
            for _ in range(layers):
                h = torch.tanh(self.burn(h))
            return self.body(x) + 1e-3 * h.mean(dim=1)[:, :4]

    return Heavy()


def register_heavy_model(
    data_dir: Path, *, name: str = "heavy", version: str = "1"
) -> tuple[Path, VersionRecord]:
    """Register ``name:version`` for onnxruntime (onnx-fp32) and LiteRT (tflite-fp32) with a
    host p50 of about 3 ms on each, however fast this host is: the depth is scaled until the
    controller's own measurement says so."""
    from edgefleet.controller.compress.data import Dataset
    from edgefleet.controller.compress.pipeline import CompressionData, compress_and_register
    from edgefleet.controller.compress.recipe import Recipe
    from edgefleet.controller.compress.sources import torch_source
    from edgefleet.controller.config import get_settings
    from edgefleet.controller.registry.service import ModelRegistry

    rng = np.random.default_rng(1)
    data = Dataset(inputs={"x": rng.standard_normal((16, 16)).astype(np.float32)})
    layers = 32
    for attempt in range(4):
        attempt_dir = data_dir / f"attempt-{attempt}"
        # Two golden pairs: the emulated device runs each, and each takes seconds there.
        settings = get_settings(data_dir=attempt_dir, latency_runs=15, golden_pairs=2)
        registered = compress_and_register(
            ModelRegistry.from_settings(settings),
            name,
            version,
            torch_source(_heavy_module(seed=1, layers=layers), ("x",)),
            Recipe(targets=("onnx-fp32", "tflite-fp32")),
            CompressionData(evaluation=data, calibration=data),
            settings=settings,
        )
        slowest_p50 = min(a.report.latency.p50_ms for a in registered.artifacts)
        if slowest_p50 >= 2.5:
            return attempt_dir, registered
        layers = min(512, int(layers * 3.0 / max(slowest_p50, 0.05)) + 1)
    raise AssertionError(f"could not build a model with a host p50 over 2.5 ms: {registered}")


@pytest.fixture(scope="module")
def heavy_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VersionRecord]:
    """The heavy model in a controller data dir of its own, and its registry record."""
    return register_heavy_model(tmp_path_factory.mktemp("heavy-model"))


@pytest.fixture(scope="module")
def model_template(heavy_registry: tuple[Path, VersionRecord]) -> Path:
    """The controller data dir the ``fleet`` fixture copies: this module's heavy model."""
    return heavy_registry[0]


def start_arm64_agent(
    fleet: Any,
    root: Arm64Root,
    venv: AgentVenv,
    device_id: str,
    cpu: str,
    **overrides: object,
) -> Arm64AgentProcess:
    """An emulated agent in ``fleet``: its config, data and key under the fleet's temp dir,
    which the root sees at the same path."""
    fleet.http[device_id] = f"127.0.0.1:{free_port()}"
    values = settings_dict(
        device_id=device_id,
        broker_url=fleet.broker_url,
        topics=fleet.topics,
        key_path=fleet.controller_dir / "keys" / "signing.pub",
        data_dir=fleet.root / f"agent-{device_id}",
        http_bind=fleet.http[device_id],
        **{**EMULATED, "labels": {"board": cpu}, **overrides},
    )
    config = write_toml(fleet.root / f"{device_id}.toml", values)
    agent = Arm64AgentProcess(root, venv, config, fleet.root / f"{device_id}.log", cpu).start()
    fleet.agents[device_id] = agent  # stopped with the fleet
    return agent


def _emulated_cpu(agent: Arm64AgentProcess) -> str:
    """The CPU model qemu emulates for the running agent, from its process on the host."""
    assert agent.proc is not None
    proc = Path(f"/proc/{agent.proc.pid}")
    assert proc.joinpath("exe").resolve().name == QEMU.name, proc.joinpath("exe").resolve()
    variables = dict(
        item.split("=", 1) for item in proc.joinpath("environ").read_text().split("\0") if item
    )
    return variables.get("QEMU_CPU", "")


def _warnings(agent: Arm64AgentProcess) -> str:
    lines = [ln for ln in agent.log().splitlines() if " WARNING " in ln or " ERROR " in ln]
    return "\n".join(lines)[-1500:]


def _explain(fleet: Any, rollout: dict[str, Any]) -> str:
    rows = "\n".join(f"  {d['device_id']} {d['state']}: {d['reason']}" for d in rollout["devices"])
    logs = "\n".join(f"--- {name}\n{_warnings(agent)}" for name, agent in fleet.agents.items())
    return f"rollout {rollout['status']}: {rollout['reason']}\n{rows}\n{logs}"


def _check_outputs(golden: GoldenSet, got: dict[str, Any], pair_index: int) -> None:
    pair = golden.pairs[pair_index]
    for name, tensor in pair.outputs.items():
        expected = np.frombuffer(tensor.raw(), dtype=tensor.dtype).reshape(tensor.shape)
        actual = np.asarray(got[name], dtype=expected.dtype)
        assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
        if golden.compare == "top1":
            assert (actual.argmax(-1) == expected.argmax(-1)).all(), (actual, expected)
        else:
            np.testing.assert_allclose(actual, expected, rtol=golden.rtol, atol=golden.atol)


@pytest.mark.parametrize("cpu", list(CPU_MODELS))
def test_agent_installs_and_says_hello_as_an_arm64_pi(cpu, fleet, arm64_root, arm64_agent):
    started = time.monotonic()
    agent = start_arm64_agent(fleet, arm64_root, arm64_agent, f"pi-{cpu}", cpu)
    fleet.wait_devices([f"pi-{cpu}"], timeout=300)
    hello_s = time.monotonic() - started
    assert _emulated_cpu(agent) == cpu
    device = {d["id"]: d for d in fleet.controller.get("/api/devices")}[f"pi-{cpu}"]
    assert device["arch"] == "aarch64", device
    runtimes = {r["name"]: r["version"] for r in device["runtimes"]}
    assert set(runtimes) == {"onnxruntime", "litert"}, device
    pins = aarch64_requirements()
    # The versions pip installed on aarch64 are the ones the agent's extras allow there.
    assert pins["onnxruntime"].specifier.contains(runtimes["onnxruntime"]), (pins, runtimes)
    assert pins["ai-edge-litert"].specifier.contains(runtimes["litert"]), (pins, runtimes)
    # Its local HTTP endpoint is up (and has no model yet).
    _wait_for_http(fleet.http[f"pi-{cpu}"], timeout=120)
    health = httpx.get(f"http://{fleet.http[f'pi-{cpu}']}/v1/health", timeout=30).json()
    assert health["device_id"] == f"pi-{cpu}", health
    assert health["model"] is None, health
    print(f"{cpu}: hello after {hello_s:.0f}s with {runtimes}")


@pytest.mark.parametrize("cpu", list(CPU_MODELS))
def test_rollout_of_a_model_slow_on_the_host_converges_on_both_runtimes(
    cpu, fleet, arm64_root, arm64_agent, heavy_registry
):
    registered = heavy_registry[1]
    artifacts = {a.target: a for a in registered.artifacts}
    for artifact in artifacts.values():
        # A model the host itself takes over 2 ms on: the host's figure says nothing about a Pi.
        assert artifact.report.latency.p95_ms > HOST_P95_FLOOR_MS, artifact.report.latency
    both, litert = f"{cpu}-both", f"{cpu}-litert"
    start_arm64_agent(fleet, arm64_root, arm64_agent, both, cpu)
    start_arm64_agent(fleet, arm64_root, arm64_agent, litert, cpu, runtimes=["litert"])
    fleet.wait_devices([both, litert], timeout=300)
    started = time.monotonic()
    rollout = fleet.rollout(
        "1", model="heavy", expect=ENDED, waves="100%", policy={"soak_s": 0}, timeout=900
    )
    rollout_s = time.monotonic() - started
    assert rollout["status"] == "completed", _explain(fleet, rollout)
    targets = {d["device_id"]: d["target"] for d in rollout["devices"]}
    assert targets == {both: "onnx-fp32", litert: "tflite-fp32"}, rollout["devices"]
    devices = {d["id"]: d for d in fleet.controller.get("/api/devices")}
    for device_id, target in targets.items():
        assert devices[device_id]["active"]["version"] == "1", devices[device_id]
        assert devices[device_id]["active"]["target"] == target, devices[device_id]
    # Each device timed the model itself: far slower than the host, so the budget derived from
    # the host that manifests used to carry (3x the host's p95, at least 5 ms) would have
    # refused it.
    warm_ms = {}
    for device_id, target in targets.items():
        events = fleet.controller.get(f"/api/devices/{device_id}/events")
        (swapped,) = [e for e in events if e["type"] == "swapped" and e["version"] == "1"]
        warm_ms[device_id] = swapped["figures"]["warm_latency_ms"]
        host_budget_ms = max(5.0, 3 * artifacts[target].report.latency.p95_ms)
        assert warm_ms[device_id] > host_budget_ms, (swapped, target)

    # Local applications get answers from the model each device runs, equal to the golden ones.
    timings = {}
    for device_id, target in targets.items():
        golden = artifacts[target].golden
        elapsed = []
        for index, pair in enumerate(golden.pairs):
            inputs = {
                name: np.frombuffer(t.raw(), dtype=t.dtype).reshape(t.shape).tolist()
                for name, t in pair.inputs.items()
            }
            began = time.monotonic()
            response = httpx.post(
                f"http://{fleet.http[device_id]}/v1/infer", json={"inputs": inputs}, timeout=120
            )
            elapsed.append(time.monotonic() - began)
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["model_id"], body["version"]) == ("heavy", "1"), body
            _check_outputs(golden, body["outputs"], index)
        timings[device_id] = statistics.median(elapsed)
    host = {t: a.report.latency.p95_ms for t, a in artifacts.items()}
    print(
        f"{cpu}: rollout {rollout_s:.0f}s; host p95 {host} ms; device warm latency {warm_ms} ms; "
        f"device HTTP p50 {timings} s"
    )


def _wait_for_http(address: str, timeout: float) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"http://{address}/v1/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=timeout, interval=1)
