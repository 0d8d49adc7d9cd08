"""Driving a real controller in tests: tiny registered models and ``edgefleet controller serve``
as a child process that can be killed like a crash and started again on the same data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from support.mosquitto import free_port

CONTROLLER_FAST = {
    "EDGEFLEET_ENGINE_INTERVAL_S": "0.2",
    "EDGEFLEET_INGEST_FLUSH_S": "0.05",
    "EDGEFLEET_INGEST_WORKER_FLUSH_S": "0.05",
    "EDGEFLEET_CHUNK_COALESCE_S": "0.3",
    "EDGEFLEET_LATENCY_RUNS": "5",
}


def register_tiny_model(
    data_dir: Path,
    *,
    name: str = "tiny",
    version: str = "1",
    targets: tuple[str, ...] = ("onnx-fp32", "onnx-int8", "tflite-fp32"),
    seed: int = 0,
    slow: bool = False,
    database_url: str | None = None,
) -> Any:
    """Compress and register a small classifier (16 -> 4). ``slow`` adds heavy, useless compute
    that leaves outputs the same kind, so its latency regresses but it validates."""
    import torch
    from torch import nn

    from edgefleet.controller.compress.data import Dataset
    from edgefleet.controller.compress.pipeline import CompressionData, compress_and_register
    from edgefleet.controller.compress.recipe import Recipe
    from edgefleet.controller.compress.sources import torch_source
    from edgefleet.controller.config import get_settings
    from edgefleet.controller.registry.service import ModelRegistry

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
            self.heavy = nn.Sequential(*[nn.Linear(384, 384) for _ in range(24)]) if slow else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            if self.heavy is not None:
                # 16 copies of the batch through 24 layers: ~57M MACs per sample, milliseconds
                # on a CPU against the tiny model's microseconds, so the regression stands
                # out of any scheduling noise on a loaded machine.
                burn = self.heavy(x.repeat(16, 24))
                out = out + 0.0 * burn[: x.shape[0], :4]
            return out

    rng = np.random.default_rng(seed)
    data = Dataset(inputs={"x": rng.standard_normal((48, 16)).astype(np.float32)})
    settings = get_settings(data_dir=data_dir, latency_runs=5, database_url=database_url)
    registry = ModelRegistry.from_settings(settings)
    return compress_and_register(
        registry,
        name,
        version,
        torch_source(Tiny(), ("x",)),
        Recipe(targets=targets),  # type: ignore[arg-type]
        CompressionData(evaluation=data, calibration=data),
        settings=settings,
    )


class ControllerProcess:
    """``edgefleet controller serve`` on a free port, with its own data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        broker_url: str | None,
        topic_root: str,
        extra_env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        self.env.update(CONTROLLER_FAST)
        self.env.update(
            {
                "EDGEFLEET_DATA_DIR": str(data_dir),
                "EDGEFLEET_HTTP_PORT": str(self.port),
                "EDGEFLEET_TOPIC_ROOT": topic_root,
                "EDGEFLEET_API_TOKEN": "test-token",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if broker_url:
            self.env["EDGEFLEET_BROKER_URL"] = broker_url
        self.env.update(extra_env or {})
        self.log_path = data_dir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = "test-token"

    def start(self, timeout: float = 60.0) -> ControllerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.controller.cli", "controller", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited {self.proc.returncode}:\n{self.log()}")
            try:
                health = httpx.get(
                    f"{self.url}/api/health",
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=1,
                ).json()
                workers = health.get("ingest", {}).get("workers", {})
                if health.get("broker_connected") and workers.get("connected", 0) >= workers.get(
                    "configured", 0
                ):  # telemetry is QoS 0: what is sent before the workers subscribe is lost
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        self.kill()  # never leave a half-started controller behind
        raise TimeoutError(f"controller not healthy within {timeout}s:\n{self.log()}")

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def get(self, path: str) -> Any:
        response = self.api("GET", path)
        response.raise_for_status()
        return response.json()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ingest_worker_pids(self) -> list[int]:
        """The pids of the controller's ingest worker processes (its spawned children)."""
        if self.proc is None:
            return []
        return child_pids(self.proc.pid, "spawn_main")


def child_pids(parent: int, marker: str) -> list[int]:
    """Live processes whose parent is ``parent`` and whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent and fields[0] != "Z" and marker in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def register_cpu_bound_model(
    data_dir: Path,
    *,
    name: str,
    version: str,
    repeat: int,
    width: int = 256,
    layers: int = 4,
    seed: int = 0,
    targets: tuple[str, ...] = ("onnx-fp32",),
) -> Any:
    """Compress and register a 16 -> 4 classifier (the inputs :meth:`Fleet.start_traffic`
    sends) whose latency is set by its compute: ``repeat`` copies of the input, widened to
    ``width``, through ``layers`` dense layers, i.e. ``repeat * layers * width**2`` MACs per
    sample for ``layers * width**2`` weights, so a slow model stays small to ship.

    Returns:
        The registered version record; each artifact's report holds its latency on this host.
    """
    import torch
    from torch import nn

    from edgefleet.controller.compress.data import Dataset
    from edgefleet.controller.compress.pipeline import CompressionData, compress_and_register
    from edgefleet.controller.compress.recipe import Recipe
    from edgefleet.controller.compress.sources import torch_source
    from edgefleet.controller.config import get_settings
    from edgefleet.controller.registry.service import ModelRegistry

    if repeat < 1 or layers < 1 or width < 16 or width % 16:
        raise ValueError(f"repeat {repeat}, layers {layers}, width {width}: width is 16 * N")

    class CpuBound(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
            self.heavy = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            burn = self.heavy(x.repeat(repeat, width // 16))
            # The burn reaches the output (times zero), so no exporter or optimizer drops it.
            out: torch.Tensor = self.body(x) + 0.0 * burn[: x.shape[0], :4]
            return out

    rng = np.random.default_rng(seed)
    data = Dataset(inputs={"x": rng.standard_normal((48, 16)).astype(np.float32)})
    # 20 timed runs: a host p95 that means something, at ~0.1 s per model.
    settings = get_settings(data_dir=data_dir, latency_runs=20)
    registry = ModelRegistry.from_settings(settings)
    return compress_and_register(
        registry,
        name,
        version,
        torch_source(CpuBound(), ("x",)),
        Recipe(targets=targets),  # type: ignore[arg-type]
        CompressionData(evaluation=data, calibration=data),
        settings=settings,
    )
