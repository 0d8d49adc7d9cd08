"""What the latency histogram costs the agent: time per recorded inference and memory.

    python bench/agent_histogram.py [--quick]

Time: the agent's ``MetricsRegistry.record_ok`` (lock, bucket index, count, sum, min and max)
against a baseline recorder measured in the same run that keeps what an agent without a
histogram would (lock, count, sum, min and max), over the same lognormal latencies; the
difference is the histogram's cost per inference (best of five passes). Memory: in a fresh
interpreter, the agent's metrics for two model versions (an active one and one swapped in, each
with its telemetry-window and since-load marks) after a million recorded inferences and a
telemetry window taken every 10,000; Python's allocator (tracemalloc) says what they hold, and
a second run without tracemalloc what the process's RSS grew by. Goals: <= 2 us and <= 1 MB.
Prints JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEMORY_PROBE = """
import json, math, random, tracemalloc, psutil
from edgefleet.agent.metrics import MetricsRegistry
from edgefleet.shared.messages import ModelStats  # imported before the first reading
process = psutil.Process()
random.seed(7)
latencies = [random.lognormvariate(math.log(4.0), 0.6) for _ in range(10_000)]
rss_before = process.memory_info().rss
if {traced}:
    tracemalloc.start()
registry = MetricsRegistry()
windows = 0
for round_ in range({rounds}):
    for version in ("1", "2"):
        key = ("model", version)
        for ms in latencies:
            registry.record_ok(key, ms)
        if round_ == 0:
            registry.reset_version(key)
    registry.take_window(10.0)
    windows += 1
rss_after = process.memory_info().rss
held, _ = tracemalloc.get_traced_memory()
print(json.dumps({{"held_bytes": held, "rss_grew_bytes": rss_after - rss_before,
                   "recorded": 2 * {rounds} * len(latencies), "windows": windows}}))
"""


class CountingRecorder:
    """A recorder without a histogram: what the agent's registry does besides the histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], list[float]] = {}

    def record_ok(self, key: tuple[str, str], ms: float) -> None:
        lock = self._lock
        lock.acquire()
        try:
            totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = [0, 0.0, math.inf, 0.0]
            totals[0] += 1
            totals[1] += ms
            if ms < totals[2]:
                totals[2] = ms
            if ms > totals[3]:
                totals[3] = ms
        finally:
            lock.release()


def per_record_us(record: object, latencies: list[float]) -> float:
    key = ("model", "1")
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for ms in latencies:
            record(key, ms)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best / len(latencies) * 1e6


def memory_probe(rounds: int, *, traced: bool) -> dict[str, int]:
    """The probe's figures in a fresh interpreter; RSS is read from a run without tracemalloc,
    whose own bookkeeping would count."""
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE.format(rounds=rounds, traced=traced)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    figures: dict[str, int] = json.loads(probe.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inferences")
    args = parser.parse_args()
    from edgefleet.agent.metrics import MetricsRegistry

    random.seed(3)
    count = 100_000 if args.quick else 500_000
    latencies = [random.lognormvariate(math.log(4.0), 0.8) for _ in range(count)]
    agent_us = per_record_us(MetricsRegistry().record_ok, latencies)
    baseline_us = per_record_us(CountingRecorder().record_ok, latencies)
    rounds = 10 if args.quick else 50
    traced, untraced = (memory_probe(rounds, traced=t) for t in (True, False))
    memory = {"held_bytes": traced["held_bytes"]} | {
        k: untraced[k] for k in ("rss_grew_bytes", "recorded", "windows")
    }
    result = {
        "histogram_us_per_inference": round(agent_us - baseline_us, 3),
        "record_us": round(agent_us, 3),
        "baseline_record_us": round(baseline_us, 3),
        "ratio_to_baseline": round(agent_us / baseline_us, 2),
        "metrics_held_mb": round(memory["held_bytes"] / 2**20, 3),
        "rss_grew_mb": round(memory["rss_grew_bytes"] / 2**20, 3),
        "inferences_recorded": memory["recorded"],
        "windows_taken": memory["windows"],
        "goal_us": 2.0,
        "goal_mb": 1.0,
    }
    print(
        f"histogram: +{result['histogram_us_per_inference']} us per inference "
        f"({agent_us:.3f} vs {baseline_us:.3f} us), metrics hold "
        f"{result['metrics_held_mb']} MB, RSS grew {result['rss_grew_mb']} MB",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
