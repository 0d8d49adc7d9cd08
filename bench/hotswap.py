"""Hot-swap benchmark: closed-loop local inference (in-process and over HTTP) while the agent
swaps between two ONNX models through its real update path (signed manifest over MQTT, verify,
load, validate, atomic swap). Prints JSON on its last line.

    python bench/hotswap.py [--quick]

The fake controller (it signs, publishes and watches the device's events) runs in a process of
its own, as it would on another host, with every manifest signed before the load starts: the
device process holds only the agent and its local clients. Swaps alternate with steady gaps, so
that background load on the machine falls on both samples alike.

Goal: 0 failures; p99 during swaps <= 2x steady p99.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import io
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgefleet.agent.agent import Agent
from edgefleet.shared import Event, EventType, HealthPolicy, Topics, decode
from support.agent_harness import DeviceWatcher, make_key, make_settings
from support.agent_models import mlp
from support.mosquitto import MosquittoBroker
from support.mqtt import MqttProbe, Received
from support.publisher import TestPublisher

DEVICE = "bench-1"
ROOT = "edgefleet-bench/v1"
SIZES = (784, 256, 10)
SWAP_MARGIN_S = 0.05  # requests this close after a swap still count as "during"
GAP_S = 0.2  # steady serving between two swaps
WARMUP_S = 0.5  # requests before this are not counted
FAILED = frozenset({
    EventType.MANIFEST_REFUSED, EventType.DOWNLOAD_FAILED, EventType.VERIFY_FAILED,
    EventType.LOAD_FAILED, EventType.VALIDATION_FAILED, EventType.ERROR,
})  # fmt: skip

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


def controller(conn: Connection, host: str, port: int, work: str, swaps: int) -> None:
    """The fake controller, in its own process: signs every manifest up front, then per request
    publishes the next one and answers once the device reports it swapped."""
    try:
        topics = Topics(ROOT)
        key, key_path = make_key(Path(work))
        publisher = TestPublisher(host, port, topics, key).start()
        probe = MqttProbe(host, port).connect()
        DeviceWatcher(probe, topics, DEVICE)  # subscribes to the device's topics
        models = {
            "a": mlp(Path(work) / "a.onnx", 1, SIZES),
            "b": mlp(Path(work) / "b.onnx", 2, SIZES),
        }
        golden = [{"x": np.random.default_rng(0).standard_normal((1, SIZES[0])).astype(np.float32)}]
        policy = HealthPolicy(window_s=3600, max_p95_regression=100.0)
        names = ["a", "b"] + ["a" if i % 2 == 0 else "b" for i in range(swaps)]
        prepared = [
            publisher.sign(
                publisher.manifest(
                    models[name], device_id=DEVICE, serial=serial, golden_inputs=golden,
                    version=name, chunk_size=256 * 1024, health=policy, latency_budget_ms=100.0,
                )
            )
            for serial, name in enumerate(names, start=1)
        ]  # fmt: skip
        events = topics.events(DEVICE)
        conn.send(str(key_path))
        for serial, signed in enumerate(prepared, start=1):
            if conn.recv() != "deploy":  # "stop", early or once every swap is done
                break
            publisher.publish_desired(DEVICE, signed)

            def swapped(item: Received, serial: int = serial) -> bool:
                if item.topic != events:
                    return False
                event = decode(item.payload, Event)
                if event.serial == serial and event.type in FAILED:
                    raise RuntimeError(f"serial {serial}: {event.type} {event.reason}")
                return event.serial == serial and event.type == EventType.SWAPPED

            probe.wait_for(swapped, timeout=60)
            conn.send("swapped")
        else:
            conn.recv()  # "stop"
        probe.close()
        publisher.stop()
    except Exception as e:  # noqa: BLE001 - reported to the bench process, which raises
        conn.send(f"error: {type(e).__name__}: {e}")


def run(work: Path, swaps: int, gap_s: float, stack: contextlib.ExitStack) -> dict[str, float]:
    broker = MosquittoBroker(work / "mosquitto")
    broker.start()
    stack.callback(broker.stop)
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    child = context.Process(
        target=controller,
        args=(child_conn, broker.host, broker.port, str(work), swaps),
        name="bench-controller",
        daemon=True,
    )
    child.start()
    stack.callback(child.join, 10)

    def reply(timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while not conn.poll(0.5):
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the controller process stopped answering ({child.exitcode})")
        message = conn.recv()
        if message.startswith("error:"):
            raise RuntimeError(f"controller process: {message}")
        return str(message)

    key_path = Path(reply())
    settings = make_settings(
        device_id=DEVICE, broker_url=broker.url, topics=Topics(ROOT), key_path=key_path,
        data_dir=work / "agent", warmup_runs=3, validation_timed_runs=10, telemetry_interval_s=10.0,
    )  # fmt: skip
    agent = Agent(settings).start()
    stack.callback(agent.stop)
    stack.callback(conn.send, "stop")

    def deploy() -> tuple[float, float]:
        start = time.perf_counter()
        conn.send("deploy")
        reply()
        return start, time.perf_counter()

    deploy()
    deploy()  # both artifacts are now on the device; the swaps below re-use them
    windows = []
    x = np.random.default_rng(1).standard_normal((1, SIZES[0])).astype(np.float32)
    with Load(agent, x) as load:
        time.sleep(WARMUP_S + gap_s)
        for _ in range(swaps):
            windows.append(deploy())
            time.sleep(gap_s)  # steady state between swaps
    measured_from = windows[0][0] - gap_s

    during, steady = [], []
    by_mode: dict[tuple[str, bool], list[float]] = {}
    records = [r for r in load.records if r[0] >= measured_from]
    starts = [w_start for w_start, _ in windows]
    for start, end, _, mode in records:
        # the last window opened before the request ended is the one it can overlap
        last = bisect.bisect_left(starts, end) - 1
        in_swap = last >= 0 and start < windows[last][1] + SWAP_MARGIN_S
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
    p99_steady, p99_swap = percentile(steady, 99), percentile(during, 99)
    return {
        "requests": len(records),
        "failures": sum(1 for _, _, ok, _ in load.records if not ok),
        "swaps": swaps,
        "p99_steady_ms": round(p99_steady, 3),
        "p99_swap_ms": round(p99_swap, 3),
        "p99_ratio": round(p99_swap / p99_steady, 3) if p99_steady else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 swaps instead of 100")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        result = run(Path(tmp), 20 if args.quick else 100, GAP_S, stack)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
