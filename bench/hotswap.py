"""Hot-swap benchmark: closed-loop local inference (in-process and over HTTP) while the agent
swaps between two ONNX models through its real update path (signed manifest over MQTT, verify,
load, validate, atomic swap). Prints JSON on its last line.

    python bench/hotswap.py [--quick]

Goal: 0 failures; p99 during swaps <= 2x steady p99.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgefleet.agent.agent import Agent
from edgefleet.shared import EventType, HealthPolicy, Topics
from support.agent_harness import DeviceWatcher, make_key, make_settings
from support.agent_models import mlp
from support.mosquitto import MosquittoBroker
from support.mqtt import MqttProbe
from support.publisher import TestPublisher

DEVICE = "bench-1"
SIZES = (784, 256, 10)
SWAP_MARGIN_S = 0.05  # requests this close after a swap still count as "during"

Record = tuple[float, float, bool, str]  # start, end, ok, mode


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


class Load:
    """Closed-loop clients: one in-process, one over HTTP (.npy), recording every request."""

    def __init__(self, agent: Agent, x: np.ndarray) -> None:
        self.agent, self.x = agent, x
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.inproc, name="bench-inproc"),
            threading.Thread(target=self.over_http, name="bench-http"),
        ]

    def add(self, start: float, ok: bool, mode: str) -> None:
        with self.lock:
            self.records.append((start, time.perf_counter(), ok, mode))

    def inproc(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                self.agent.infer({"x": self.x})
                ok = True
            except Exception:  # noqa: BLE001 - every failure is counted
                ok = False
            self.add(start, ok, "inproc")

    def over_http(self) -> None:
        host, port = self.agent.http_address or ("127.0.0.1", 0)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        buffer = io.BytesIO()
        np.save(buffer, self.x)
        body = buffer.getvalue()
        headers = {"Content-Type": "application/x-npy"}
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/infer", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
            self.add(start, ok, "http")
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def run(work: Path, swaps: int, steady_s: float, stack: contextlib.ExitStack) -> dict[str, float]:
    broker = MosquittoBroker(work / "mosquitto")
    broker.start()
    stack.callback(broker.stop)
    topics = Topics("edgefleet-bench/v1")
    key, key_path = make_key(work)
    publisher = TestPublisher(broker.host, broker.port, topics, key).start()
    stack.callback(publisher.stop)
    probe = MqttProbe(broker.host, broker.port).connect()
    stack.callback(probe.close)
    watcher = DeviceWatcher(probe, topics, DEVICE)
    models = {"a": mlp(work / "a.onnx", 1, SIZES), "b": mlp(work / "b.onnx", 2, SIZES)}
    settings = make_settings(
        device_id=DEVICE, broker_url=broker.url, topics=topics, key_path=key_path,
        data_dir=work / "agent", warmup_runs=3, validation_timed_runs=10, telemetry_interval_s=10.0,
    )  # fmt: skip
    agent = Agent(settings).start()
    stack.callback(agent.stop)
    rng = np.random.default_rng(0)
    golden = [{"x": rng.standard_normal((1, SIZES[0])).astype(np.float32)}]
    policy = HealthPolicy(window_s=3600, max_p95_regression=100.0)
    serial = 0

    def deploy(name: str) -> tuple[float, float]:
        nonlocal serial
        serial += 1
        manifest = publisher.manifest(
            models[name], device_id=DEVICE, serial=serial, golden_inputs=golden, version=name,
            chunk_size=256 * 1024, health=policy, latency_budget_ms=100.0,
        )  # fmt: skip
        start = time.perf_counter()
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        watcher.wait_event(EventType.SWAPPED, timeout=60, where=lambda e, s=serial: e.serial == s)
        return start, time.perf_counter()

    deploy("a")
    deploy("b")  # both artifacts are now on the device; the swaps below re-use them
    windows = []
    with Load(agent, rng.standard_normal((1, SIZES[0])).astype(np.float32)) as load:
        time.sleep(steady_s)  # steady state before the swaps
        for i in range(swaps):
            windows.append(deploy("a" if i % 2 == 0 else "b"))
        time.sleep(steady_s / 2)  # and after them

    during, steady = [], []
    by_mode: dict[tuple[str, bool], list[float]] = {}
    for start, end, _, mode in load.records:
        in_swap = any(start < w_end + SWAP_MARGIN_S and end > w_start for w_start, w_end in windows)
        ms = (end - start) * 1000.0
        (during if in_swap else steady).append(ms)
        by_mode.setdefault((mode, in_swap), []).append(ms)
    for (mode, in_swap), values in sorted(by_mode.items()):
        print(
            f"{mode:>6} {'during swaps' if in_swap else 'steady':>12}: {len(values):>7} requests, "
            f"p50 {percentile(values, 50):.3f} ms, p99 {percentile(values, 99):.3f} ms"
        )
    mean_swap = np.mean([e - s for s, e in windows]) * 1000
    print(f"mean swap (publish -> swapped event): {mean_swap:.1f} ms")
    return {
        "requests": len(load.records),
        "failures": sum(1 for _, _, ok, _ in load.records if not ok),
        "swaps": swaps,
        "p99_steady_ms": round(percentile(steady, 99), 3),
        "p99_swap_ms": round(percentile(during, 99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 swaps instead of 100")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        result = run(Path(tmp), 20 if args.quick else 100, 3.0 if args.quick else 10.0, stack)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
