"""The arm64 row of ``bench/agent_footprint.py``: RSS of the agent daemon serving a model under
qemu-user emulating a Raspberry Pi 4 (Cortex-A72) next to a bare onnxruntime process holding the
same model, in the same emulation and the same run (both carry qemu's own memory alike).

Uses the arm64 root of the test suite (``tests/support/arm64.py``): built once and cached in
``/var/cache/edgefleet``; the first run takes several minutes.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from edgefleet.shared import Topics
from support.agent_harness import DeviceWatcher, settings_dict, write_toml
from support.agent_models import BuiltModel
from support.arm64 import Arm64UnavailableError, check_mount_namespaces, ensure_binfmt, ensure_root
from support.arm64_install import (
    Arm64AgentProcess,
    build_agent_wheels,
    ensure_deps_venv,
    install_agent,
)
from support.mosquitto import MosquittoBroker, free_port
from support.mqtt import MqttProbe
from support.publisher import TestPublisher

CPU = "cortex-a72"

BASELINE = """
import sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, {"x": np.zeros((1, int(sys.argv[2])), np.float32)})
print("ready", flush=True)
import time
time.sleep(3600)
"""


def _rss_when(path: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while marker not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {marker!r} from {proc.args}: {path.read_text()[-2000:]}")
        time.sleep(0.5)
    time.sleep(3.0)  # let the swap's (or the load's) garbage settle
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def arm64_row(
    work: Path,
    model: BuiltModel,
    broker: MosquittoBroker,
    topics: Topics,
    key_path: Path,
    publisher: TestPublisher,
    deploy: Callable[..., None],
    stack: contextlib.ExitStack,
) -> dict[str, float | str]:
    """``{"arm64_agent_rss_mb", "arm64_baseline_rss_mb", "arm64_cpu"}``, or the reason the
    machine cannot emulate arm64 (``{"arm64_skipped": why}``)."""
    try:
        ensure_binfmt()
        check_mount_namespaces()
    except Arm64UnavailableError as e:
        return {"arm64_skipped": str(e)}
    root = ensure_root().with_binds(work)
    wheels = build_agent_wheels(work / "wheels")
    ensure_deps_venv(root, wheels)
    venv = install_agent(root, wheels, work / "arm64-venv")

    width = model.signature.inputs[0].shape[1] or 1
    log = work / "arm64-baseline.log"
    bare = root.popen(
        [venv.python, "-c", BASELINE, str(model.path), str(width)], cpu=CPU, log_path=log
    )
    stack.callback(bare.kill)
    baseline_mb = _rss_when(log, "ready", bare, timeout=600)
    bare.kill()

    values = settings_dict(
        device_id="arm64", broker_url=broker.url, topics=topics, key_path=key_path,
        data_dir=work / "arm64-data", http_bind=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    for fast in ("telemetry_interval_s", "keepalive_s", "health_check_interval_s"):
        values.pop(fast)
    config = write_toml(work / "arm64.toml", values)
    agent = Arm64AgentProcess(root, venv, config, work / "arm64-agent.log", CPU).start()
    stack.callback(agent.kill)
    probe = MqttProbe(broker.host, broker.port).connect()
    stack.callback(probe.close)
    deploy(publisher, DeviceWatcher(probe, topics, "arm64"), model, "arm64", timeout=900)
    assert agent.proc is not None
    time.sleep(3.0)
    agent_mb = psutil.Process(agent.proc.pid).memory_info().rss / 2**20
    print(f"arm64 ({CPU}, qemu-user): agent RSS {agent_mb:.1f} MB, bare {baseline_mb:.1f} MB")
    return {
        "arm64_cpu": CPU,
        "arm64_agent_rss_mb": round(agent_mb, 1),
        "arm64_baseline_rss_mb": round(baseline_mb, 1),
    }
