"""The one-command demo: a controller with its embedded broker, a small fleet of real agent
processes, a gated rollout, then a bad version stopped at the canary and rolled back.

Every process the demo starts is a child of this one, in a process group of its own, and is
stopped on the way out, whatever ends the demo (the scenario's end with ``--exit``, Ctrl-C,
SIGTERM): SIGTERM to each group, SIGKILL to what is left after ``STOP_GRACE_S``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape

from edgefleet.controller.commands.rollout import rollout_table
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry.records import ArtifactRecord, VersionRecord
from edgefleet.shared.lifetime import PARENT_PID_ENV

console = Console()
STOP_GRACE_S = 4.0  # SIGTERM to SIGKILL: the whole stop stays under 5 s

# Libraries the demo's model building imports, and what they print at import unless told not to
# (TensorFlow's C++ logging and absl, torch's and torchao's loggers): set before they import.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "3"}
QUIET_LOGGERS = ("torchao", "torch", "torch.utils._pytree", "absl", "tensorflow", "jax")


@dataclass(frozen=True)
class DemoDevice:
    device_id: str
    runtimes: tuple[str, ...]
    labels: dict[str, str]


DEVICES = (
    DemoDevice("pi4-onnx-01", ("onnxruntime",), {"site": "plant-3", "board": "pi4"}),
    DemoDevice("pi4-onnx-02", ("onnxruntime",), {"site": "plant-3", "board": "pi4"}),
    DemoDevice("pi5-litert-01", ("litert",), {"site": "plant-3", "board": "pi5"}),
    DemoDevice("pi5-both-01", ("onnxruntime", "litert"), {"site": "plant-3", "board": "pi5"}),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoWorld:
    data_dir: Path
    port: int = field(default_factory=_free_port)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agent_ports: dict[str, int] = field(default_factory=dict)
    stop_traffic: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method, self.url + path, json=body, timeout=30,
            headers={"Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        response.raise_for_status()
        return response.json()

    def spawn(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.data_dir / log_name).open("ab")
        proc = subprocess.Popen(  # its own group: stopped as one, and not by the terminal's ^C
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, PARENT_PID_ENV: str(os.getpid())},  # it ends when the demo dies
        )  # fmt: skip
        log.close()
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        """Stop every process group the demo started: SIGTERM to all at once, SIGKILL to what is
        still there after ``STOP_GRACE_S``."""
        self.stop_traffic.set()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in reversed(self.processes):
            _signal_group(proc, signal.SIGTERM)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # its children too, even if it exited
            proc.wait()
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def quiet_third_party() -> None:
    """Keep third-party import-time chatter off the demo's console (see ``QUIET_ENV``)."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(torch|torchao|tensorflow|keras|jax)(\.|$)")


class DemoStopped(Exception):  # noqa: N818 - it is a stop, not an error
    """SIGTERM or SIGINT arrived: the demo stops every process it started and exits."""


def _stop_on_signal(signum: int, frame: object) -> None:
    raise DemoStopped(signal.Signals(signum).name)


def _wait(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with console.status(what):
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s: {what}")
            time.sleep(0.3)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send what is written to file descriptor 2 (the C++ logging of TensorFlow, LiteRT and the
    converters, which no setting silences) to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class BuiltVersions:
    """What model building measured on this machine, for the narration."""

    student_p95_ms: float
    teacher_p95_ms: float
    size_ratio: float


def build_models(data_dir: Path) -> BuiltVersions:
    """digits:1, the reference recipe's student; digits:2, the uncompressed teacher (slow).

    Third-party output of the build goes to ``build.log`` in the data dir."""
    with _stderr_to(data_dir / "build.log"):
        return _build_models(data_dir)


def _artifact(record: VersionRecord, target: str) -> ArtifactRecord:
    return next(a for a in record.artifacts if a.target == target)


def _p95(artifact: ArtifactRecord) -> float:
    latency = artifact.report.latency
    return latency.p95_ms if latency is not None else float("nan")


def _build_models(data_dir: Path) -> BuiltVersions:
    from edgefleet.controller.compress.pipeline import CompressionData, compress_and_register
    from edgefleet.controller.compress.recipe import Recipe
    from edgefleet.controller.compress.reference import (
        INPUT_NAME,
        build_reference_model,
        digits_splits,
        train_teacher,
    )
    from edgefleet.controller.compress.sources import torch_source
    from edgefleet.controller.registry.service import ModelRegistry

    settings = get_settings(data_dir=data_dir, latency_runs=20)
    registry = ModelRegistry.from_settings(settings)
    with console.status("compressing digits:1 (distill, prune, quantize to every target)") as s:
        record = build_reference_model(
            data_dir, version="1", quick=True, settings=settings, registry=registry,
            notify=lambda message: s.update(f"digits:1: {message}"),
        )  # fmt: skip
    console.print(f"[green]built digits:1[/]: {', '.join(a.target for a in record.artifacts)}")
    with console.status("building digits:2 (the uncompressed teacher, shipped by mistake)"):
        splits = digits_splits()
        teacher = train_teacher(splits, epochs=5)
        bad = compress_and_register(
            registry, "digits", "2", torch_source(teacher, (INPUT_NAME,)),
            Recipe(targets=("onnx-fp32", "tflite-fp32")),
            CompressionData(evaluation=splits.evaluation, calibration=splits.train),
            settings=settings,
        )  # fmt: skip
    student, teacher_fp32 = _artifact(record, "onnx-int8"), _artifact(bad, "onnx-fp32")
    built = BuiltVersions(
        student_p95_ms=_p95(student),
        teacher_p95_ms=_p95(teacher_fp32),
        size_ratio=teacher_fp32.size / student.size,
    )
    console.print(
        f"[yellow]built digits:2[/] (the fp32 teacher: onnx-fp32 {built.size_ratio:.0f}x the "
        f"size of digits:1's onnx-int8, p95 {built.teacher_p95_ms:.4g} ms vs "
        f"{built.student_p95_ms:.4g} ms on this machine)"
    )
    return built


def start_controller(world: DemoWorld) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        EDGEFLEET_DATA_DIR=str(world.data_dir), EDGEFLEET_HTTP_PORT=str(world.port),
        EDGEFLEET_API_TOKEN=world.token, EDGEFLEET_ENGINE_INTERVAL_S="0.5",
        PYTHONUNBUFFERED="1",
    )  # fmt: skip
    world.spawn(
        [sys.executable, "-m", "edgefleet.controller.cli", "controller", "serve"],
        "controller.log", env,
    )  # fmt: skip

    def healthy() -> bool:
        try:
            return bool(world.api("GET", "/api/health")["broker_connected"])
        except httpx.HTTPError:
            return False

    _wait("starting the controller and its embedded MQTT broker", healthy, 60)
    health = world.api("GET", "/api/health")
    console.print(f"controller up on {world.url}; embedded broker at {health['broker_url']}")


def start_agents(world: DemoWorld) -> None:
    broker_url = world.api("GET", "/api/health")["broker_url"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    for device in DEVICES:
        port = _free_port()
        world.agent_ports[device.device_id] = port
        agent_dir = world.data_dir / "devices" / device.device_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "device_id": device.device_id, "broker_url": broker_url,
            "controller_key": str(world.data_dir / "keys" / "signing.pub"),
            "data_dir": str(agent_dir), "http_bind": f"127.0.0.1:{port}",
            "telemetry_interval_s": 1.0, "runtimes": list(device.runtimes),
            "labels": device.labels,
        }  # fmt: skip
        lines = [f"{k} = {json.dumps(v)}" for k, v in config.items() if k != "labels"]
        lines.append(
            "labels = { "
            + ", ".join(f"{k} = {json.dumps(v)}" for k, v in device.labels.items())
            + " }"
        )
        (agent_dir / "agent.toml").write_text("\n".join(lines) + "\n")
        command = [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config"]
        world.spawn([*command, str(agent_dir / "agent.toml")], f"agent-{device.device_id}.log", env)

    def all_online() -> bool:
        online = {d["id"] for d in world.api("GET", "/api/devices") if d["online"]}
        return {d.device_id for d in DEVICES} <= online

    _wait(f"starting {len(DEVICES)} agents", all_online, 90)
    for device in DEVICES:
        console.print(f"  agent {device.device_id}: runtimes {', '.join(device.runtimes)}")


def start_traffic(world: DemoWorld) -> None:
    """Each device's local app asks for a prediction 20 times a second."""
    pixels = (np.random.default_rng(0).random((1, 64))).astype(np.float32).tolist()

    def drive(port: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not world.stop_traffic.wait(0.05):
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/v1/infer", json={"inputs": {"pixels": pixels}})

    for device_id, port in world.agent_ports.items():
        thread = threading.Thread(
            target=drive, args=(port,), name=f"traffic-{device_id}", daemon=True
        )
        thread.start()
        world.threads.append(thread)


def run_rollout(
    world: DemoWorld, version: str, policy: dict[str, Any], waves: str
) -> dict[str, Any]:
    from rich.live import Live

    body = {"model": "digits", "version": version, "selector": "site=plant-3", "waves": waves,
            "policy": policy}  # fmt: skip
    rollout: dict[str, Any] = world.api("POST", "/api/rollouts", body)
    deadline = time.monotonic() + 240
    with Live(rollout_table(rollout), console=console, refresh_per_second=4) as live:
        while rollout["status"] in {"running", "rolling_back"} and time.monotonic() < deadline:
            time.sleep(0.5)
            rollout = world.api("GET", f"/api/rollouts/{rollout['id']}")
            live.update(rollout_table(rollout))
    return rollout


def run_scenario(world: DemoWorld) -> bool:
    """Return True when every step behaved as described."""
    built = build_models(world.data_dir)
    start_controller(world)
    start_agents(world)
    start_traffic(world)
    console.rule("rollout 1: digits:1 to site=plant-3, canary first, gated on telemetry")
    first = run_rollout(
        world,
        "1",
        {"soak_s": 4, "max_p95_regression": 0.5, "min_p95_regression_ms": 0.25, "min_requests": 20},
        "1,50%,100%",
    )
    ok = bool(first["status"] == "completed")
    console.print(f"rollout 1: [bold]{first['status']}[/] ({first['reason']})")
    time.sleep(6)  # a few telemetry windows of the good version: the baseline the gate uses
    slower = built.teacher_p95_ms / built.student_p95_ms
    console.rule(
        f"rollout 2: digits:2, a bad version ({slower:.1f}x the p95 of digits:1 on this "
        "machine), to the same devices"
    )
    second = run_rollout(
        world,
        "2",
        {
            "soak_s": 12,  # the canary's windows of the bad version reach the gate under load
            "max_p95_regression": 0.5,
            "min_p95_regression_ms": 0.25,
            "min_requests": 20,
        },
        "1,100%",
    )
    console.print(f"rollout 2: [bold]{second['status']}[/] ({second['reason']})")
    ok = ok and bool(second["status"] == "rolled_back")

    def back_on_v1() -> bool:
        devices = world.api("GET", "/api/devices")
        return all((d["active"] or {}).get("version") == "1" for d in devices)

    try:
        _wait("fleet back on digits:1", back_on_v1, 60)
        console.print("[green]every device runs digits:1 again[/]")
    except TimeoutError as e:
        console.print(f"[red]{e}[/]")
        ok = False
    return ok


# What the demo runs, by the module that proves it is installed: the package that brings it.
DEMO_NEEDS = {
    "torch": "torch (the controller's compress extra)",
    "sklearn": "scikit-learn (the controller's compress extra)",
    "litert_torch": "litert-torch (the controller's tflite extra)",
    "edgefleet.agent": "edgefleet-agent",
    "onnxruntime": "onnxruntime (the agent's onnx extra)",
    "ai_edge_litert": "ai-edge-litert (the agent's litert extra)",
}
DEMO_INSTALL = (
    "./scripts/try from a clone of the repository, or pip install "
    "'edgefleet-controller[compress,tflite]' 'edgefleet-agent[onnx,litert]'"
)


def missing_for_demo() -> list[str]:
    """The packages the demo needs that this environment lacks (found without importing)."""
    from edgefleet.controller.compress.tensorflow_extra import missing_modules

    return [DEMO_NEEDS[module] for module in missing_modules(tuple(DEMO_NEEDS))]


def run_demo(data_dir: Path, *, exit_after: bool) -> int:
    missing = missing_for_demo()
    if missing:
        console.print(f"[red]the demo needs {', '.join(missing)}[/]: {escape(DEMO_INSTALL)}")
        return 2
    quiet_third_party()
    data_dir.mkdir(parents=True, exist_ok=True)
    world = DemoWorld(data_dir)
    ok = False
    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ok = run_scenario(world)
        console.rule("done" if ok else "[red]something did not behave as described[/]")
        console.print(f"dashboard and API: {world.url}/  (API docs: {world.url}/docs)")
        console.print(f"logs and data: {data_dir}")
        if exit_after:
            return 0 if ok else 1
        console.print("the controller and the fleet stay up; press Ctrl-C to stop them")
        while True:  # until SIGINT or SIGTERM raises DemoStopped (signal.pause() would not
            time.sleep(0.2)  # return if another thread took the signal)
    except DemoStopped as stopped:
        if not ok:  # stopped before the scenario ended
            console.print(f"[yellow]{stopped} before the scenario ended[/]")
            return 130
        return 0
    except (TimeoutError, httpx.HTTPError) as e:
        console.print(f"[red]demo failed: {e}[/]; logs in {data_dir}")
        return 1
    finally:
        for signum in previous:  # the stop itself is not interrupted (it is bounded)
            signal.signal(signum, signal.SIG_IGN)
        started = time.monotonic()
        with console.status("stopping every process the demo started"):
            world.close()
        took = time.monotonic() - started
        console.print(f"stopped the {len(world.processes)} processes it started in {took:.1f} s")
        for signum, handler in previous.items():
            signal.signal(signum, handler)
