"""Agent footprint benchmark: RSS of an idle agent daemon serving a small ONNX model next to a
bare onnxruntime process holding the same model, idle CPU, and the per-request overhead of
``Agent.infer`` and of the local HTTP endpoint against a bare ``session.run``, all measured in
the same run. Prints JSON on its last line. The per-request figures are compared within rounds
of alternating blocks (p50 of each block) and reported as the median over rounds, so load from
other processes, which comes and goes, falls on both sides of each comparison.

    python bench/agent_footprint.py [--quick] [--no-arm64]

Goals: agent RSS <= baseline + 20 MB, idle CPU <= 1 %, in-process ratio <= 1.10, HTTP adds
<= 0.5 ms at p50. The arm64 row (``bench/arm64_footprint.py``) runs the same agent and the same
bare runtime under qemu-user emulating a Pi 4, where the machine can (else it says why).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from arm64_footprint import arm64_row
from edgefleet.agent.agent import Agent
from edgefleet.shared import EventType, Topics
from support.agent_harness import (
    AgentProcess,
    DeviceWatcher,
    make_key,
    make_settings,
    settings_dict,
    write_toml,
)
from support.agent_models import BuiltModel, mlp
from support.mosquitto import MosquittoBroker, free_port
from support.mqtt import MqttProbe
from support.publisher import TestPublisher

SIZES = (784, 512, 512, 10)  # an MNIST-sized MLP: small, but real work per request
TINY = (784, 64, 10)  # where per-call overhead dominates: printed for context only

BASELINE = """
import sys, time
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, {"x": np.zeros((1, 784), np.float32)})
print("ready", flush=True)
sys.stdin.readline()
"""


# The bare runtime plus what the agent cannot run without (its MQTT client, a pydantic model
# validated and dumped, Ed25519 verification, the stdlib HTTP server), before any agent code:
# the floor under the agent's RSS with these dependencies.
FLOOR = BASELINE.replace(
    'print("ready", flush=True)',
    """import http.server, nacl.signing, paho.mqtt.client as mqtt, pydantic
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
class Probe(pydantic.BaseModel):
    x: int
    y: list[float]
Probe.model_validate_json(Probe(x=1, y=[1.0]).model_dump_json())
print("ready", flush=True)""",
)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def baseline_rss(model: Path, script: str = BASELINE) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(model)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        return rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def interleaved_p50(
    fns: dict[str, Callable[[], object]], rounds: int, n: int
) -> list[dict[str, float]]:
    """Per round, the p50 in ms of each function over ``n`` calls. The functions run in
    alternating blocks, in an order that rotates each round, so drift, other processes and the
    cache state left by the previous block hit all alike; compare functions within a round."""
    names = list(fns)
    per_round = []
    for round_ in range(rounds):
        first = round_ % len(names)
        order = names[first:] + names[:first]
        per_round.append({name: float(np.median(timed(fns[name], n))) * 1000.0 for name in order})
    return per_round


def median_over(
    rounds: list[dict[str, float]], figure: Callable[[dict[str, float]], float]
) -> float:
    """The median across rounds of a figure computed within each round."""
    return float(np.median([figure(r) for r in rounds]))


def deploy(
    publisher: TestPublisher,
    watcher: DeviceWatcher,
    model: BuiltModel,
    device: str,
    timeout: float = 60.0,
) -> None:
    golden = [{"x": np.zeros((1, model.signature.inputs[0].shape[1] or 1), np.float32)}]
    manifest = publisher.manifest(
        model, device_id=device, serial=1, golden_inputs=golden, chunk_size=256 * 1024,
        latency_budget_ms=500.0,
    )  # fmt: skip
    publisher.publish_desired(device, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED, timeout=timeout)


def overheads(agent: Agent, model: BuiltModel, port: int, quick: bool) -> dict[str, float]:
    """p50s (ms) of a bare session, ``Agent.infer`` and HTTP, and the agent's ratio to bare and
    HTTP's added ms, each the median over rounds of the figure within a round."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, model.signature.inputs[0].shape[1] or 1))
    inputs = {"x": x.astype(np.float32)}
    buffer = io.BytesIO()
    np.save(buffer, inputs["x"])
    body = buffer.getvalue()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def over_http() -> bytes:
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/x-npy"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data
        return data

    fns = {
        "bare": lambda: session.run(None, inputs),
        "agent": lambda: agent.infer(inputs),
        "http": over_http,
    }
    for fn in fns.values():
        timed(fn, 200)  # warm up
    rounds = interleaved_p50(fns, rounds=20 if quick else 60, n=100 if quick else 300)
    conn.close()
    figures = {name: median_over(rounds, lambda r, name=name: r[name]) for name in fns}
    figures["ratio"] = median_over(rounds, lambda r: r["agent"] / r["bare"])
    figures["http_added"] = median_over(rounds, lambda r: r["http"] - r["bare"])
    return figures


def run(
    work: Path, quick: bool, arm64: bool, stack: contextlib.ExitStack
) -> dict[str, float | str]:
    broker = MosquittoBroker(work / "mosquitto")
    broker.start()
    stack.callback(broker.stop)
    topics = Topics("edgefleet-bench/v1")
    key, key_path = make_key(work)
    publisher = TestPublisher(broker.host, broker.port, topics, key).start()
    stack.callback(publisher.stop)
    model = mlp(work / "model.onnx", 1, SIZES)
    tiny = mlp(work / "tiny.onnx", 2, TINY)

    baseline_mb = baseline_rss(model.path)
    floor_mb = baseline_rss(model.path, FLOOR)

    # the agent as it runs on a device: a daemon process, default telemetry interval
    port = free_port()
    values = settings_dict(
        device_id="daemon", broker_url=broker.url, topics=topics, key_path=key_path,
        data_dir=work / "daemon", http_bind=f"127.0.0.1:{port}",
    )  # fmt: skip
    for fast in ("telemetry_interval_s", "keepalive_s", "health_check_interval_s"):
        values.pop(fast)
    daemon = AgentProcess(write_toml(work / "daemon.toml", values), work / "daemon.log").start()
    stack.callback(daemon.kill)
    probe = MqttProbe(broker.host, broker.port).connect()
    stack.callback(probe.close)
    deploy(publisher, DeviceWatcher(probe, topics, "daemon"), model, "daemon")
    assert daemon.proc is not None
    time.sleep(2.0)  # let the swap's garbage settle
    agent_mb = rss_mb(daemon.proc.pid)
    process = psutil.Process(daemon.proc.pid)
    idle_s = 20.0 if quick else 30.0
    cpu_before, wall_before = sum(process.cpu_times()[:2]), time.monotonic()
    time.sleep(idle_s)
    idle_cpu = (
        100.0 * (sum(process.cpu_times()[:2]) - cpu_before) / (time.monotonic() - wall_before)
    )
    print(
        f"agent daemon RSS {agent_mb:.1f} MB idle, baseline {baseline_mb:.1f} MB, baseline with "
        f"the agent's dependencies loaded {floor_mb:.1f} MB; idle CPU {idle_cpu:.2f} % over "
        f"{idle_s:.0f} s"
    )

    # per-request overhead: Agent.infer in this process, HTTP against the daemon
    library_probe = MqttProbe(broker.host, broker.port).connect()
    stack.callback(library_probe.close)
    settings = make_settings(
        device_id="library", broker_url=broker.url, topics=topics, key_path=key_path,
        data_dir=work / "library", http_bind="",
    )  # fmt: skip
    agent = Agent(settings).start()
    stack.callback(agent.stop)
    deploy(publisher, DeviceWatcher(library_probe, topics, "library"), model, "library")
    p50 = overheads(agent, model, port, quick)
    print(
        f"{SIZES}: p50 bare {p50['bare'] * 1000:.1f} us, "
        f"Agent.infer {p50['agent'] * 1000:.1f} us, HTTP {p50['http'] * 1000:.1f} us"
    )

    # context: the same fixed per-call cost against a much smaller model
    tiny_port = free_port()
    tiny_values = {
        **values,
        "device_id": "tiny",
        "data_dir": str(work / "tiny"),
        "http_bind": f"127.0.0.1:{tiny_port}",
    }
    tiny_daemon = AgentProcess(
        write_toml(work / "tiny.toml", tiny_values), work / "tiny.log"
    ).start()
    stack.callback(tiny_daemon.kill)
    deploy(publisher, DeviceWatcher(probe, topics, "tiny"), tiny, "tiny")
    agent.stop()
    tiny_agent = Agent(
        make_settings(
            device_id="tiny-lib",
            broker_url=broker.url,
            topics=topics,
            key_path=key_path,
            data_dir=work / "tiny-lib",
            http_bind="",
        )
    )
    tiny_agent.start()
    stack.callback(tiny_agent.stop)
    deploy(publisher, DeviceWatcher(library_probe, topics, "tiny-lib"), tiny, "tiny-lib")
    tiny_p50 = overheads(tiny_agent, tiny, tiny_port, quick=True)
    print(
        f"{TINY} (context): p50 bare {tiny_p50['bare'] * 1000:.1f} us, Agent.infer "
        f"{tiny_p50['agent'] * 1000:.1f} us (ratio {tiny_p50['ratio']:.2f}), "
        f"HTTP {tiny_p50['http'] * 1000:.1f} us"
    )
    result: dict[str, float | str] = {
        "agent_rss_mb": round(agent_mb, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "agent_rss_added_mb": round(agent_mb - baseline_mb, 1),
        "dependency_floor_added_mb": round(floor_mb - baseline_mb, 1),
        "idle_cpu_pct": round(idle_cpu, 2),
        "inproc_ratio": round(p50["ratio"], 3),
        "http_added_ms_p50": round(p50["http_added"], 3),
    }
    if arm64:
        result |= arm64_row(work, model, broker, topics, key_path, publisher, deploy, stack)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 s idle window, fewer samples")
    parser.add_argument(
        "--no-arm64",
        action="store_true",
        help="skip the arm64 row (qemu-user; the first run builds an arm64 root, several minutes)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        result = run(Path(tmp), args.quick, not args.no_arm64, stack)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
