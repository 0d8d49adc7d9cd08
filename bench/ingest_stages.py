"""Where the controller's ingest time goes, per telemetry message, in-process (no broker):
decoding the envelope, the whole of ``FleetIngest.submit`` (topic, decode, device checks,
clock clamp, rate limit, queue), and writing in batches of 500 to SQLite. Prints JSON on its
last line (microseconds per message, best of three passes of 5,000 messages). For the wire-v2
payload, ``write_at_100k_rows_us`` writes 5,000 more in the controller's own batch size
(``ingest_batch``) into a database that already holds 100,000 windows, as a long ingest run
does: with batches of 500 it measured 68-77 us here, with 2,000 51-54 us.

    python bench/ingest_stages.py

Two payloads: a wire-v1 window (a summary only, what the bench could send before histograms)
and a wire-v2 window with its latency histogram. Run it against an older tree to compare, e.g.
``PYTHONPATH=OLD/shared/src:OLD/agent/src:OLD/controller/src python bench/ingest_stages.py``
(an older tree that has no histograms measures the v1 payload only). The receive stage (the MQTT
client) is measured by ``bench/ingest.py``.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet import writer
from edgefleet.controller.fleet.ingest import FleetIngest
from edgefleet.controller.registry.db import create_engine_for, create_schema
from edgefleet.shared import (
    Hardware,
    Hello,
    LatencySummary,
    ModelStats,
    SystemStats,
    Telemetry,
    Topics,
    decode_versioned,
    encode,
)

N = 5000
DEVICES = 400
TOPICS = Topics("bench/v1")


def payloads(histogram: bool) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC)
    rng = random.Random(0)
    system = SystemStats(
        cpu_percent=20.0, process_cpu_percent=30.0, rss_bytes=80 << 20,
        mem_used_bytes=1 << 30, mem_total_bytes=4 << 30, disk_free_bytes=8 << 30,
    )  # fmt: skip
    out = []
    for i in range(N):
        device_id = f"sim-{i % DEVICES:05d}"
        latencies = [rng.lognormvariate(0.7, 0.3) for _ in range(40)]
        extra = {}
        if histogram:
            from edgefleet.shared.histogram import Histogram
            from edgefleet.shared.messages import LatencyHistogram

            wire = Histogram.of_values(latencies).wire_fields()
            extra["latency_hist"] = LatencyHistogram.model_validate(wire)
        ordered = sorted(latencies)
        stats = ModelStats(
            model_id="tiny", version="1", requests=40, errors=0,
            latency_ms=LatencySummary(
                p50=ordered[19], p95=ordered[37], p99=ordered[39], max=ordered[39]
            ),
            throughput_rps=40.0, **extra,
        )  # fmt: skip
        end = now - timedelta(seconds=N - i)
        telemetry = Telemetry(
            device_id=device_id, window_start=end - timedelta(seconds=1), window_end=end,
            models=(stats,), system=system,
        )  # fmt: skip
        out.append((TOPICS.telemetry(device_id), encode(telemetry, version=2 if histogram else 1)))
    return out


def known_devices_batch(
    sessions: sessionmaker[Session], messages: list[tuple[str, bytes]]
) -> list[Telemetry]:
    """Register the devices (a hello each, as the controller would have them) and decode the
    messages to write."""
    hardware = Hardware(arch="aarch64", cpu_count=4, ram_bytes=1 << 30)
    hellos = [
        Hello(device_id=f"sim-{i:05d}", agent_version="0.2.0", hardware=hardware,
              started_at=datetime.now(UTC))
        for i in range(DEVICES)
    ]  # fmt: skip
    writer.BatchWrite(list(hellos)).advance(sessions, {})
    return [decode_versioned(p, Telemetry)[1] for _, p in messages]


def per_message(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best / N * 1e6, 1)


def stages(messages: list[tuple[str, bytes]], work: Path) -> dict[str, float]:
    engine = create_engine_for(f"sqlite:///{work}/controller.db")
    create_schema(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    result = {
        "decode_us": per_message(lambda: [decode_versioned(p, Telemetry) for _, p in messages])
    }

    def submit() -> None:
        ingest = FleetIngest(
            sessions, TOPICS, on_fetch=lambda request: None,
            telemetry_rate=1e9, telemetry_burst=10**9,
        )  # fmt: skip
        for topic, payload in messages:
            ingest.submit(topic, payload)

    result["submit_us"] = per_message(submit)
    batch = known_devices_batch(sessions, messages)

    def write() -> None:
        for start in range(0, N, 500):
            writer.BatchWrite(list(batch[start : start + 500])).advance(sessions, {})

    result["write_us"] = per_message(write)
    engine.dispose()
    return result


def grown_write(messages: list[tuple[str, bytes]], work: Path, rows: int) -> float:
    """Microseconds per message of writing the messages in the controller's batches once the
    telemetry table already holds ``rows`` windows of ``DEVICES`` devices (its indexes outgrow
    the page cache, and checkpoints start to cost), as over a long run of bench/ingest.py."""
    from edgefleet.controller.config import Settings

    size = Settings().ingest_batch
    engine = create_engine_for(f"sqlite:///{work}/grown.db")
    create_schema(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    batch = known_devices_batch(sessions, messages)
    for _ in range(rows // N):
        for start in range(0, N, size):
            writer.BatchWrite(list(batch[start : start + size])).advance(sessions, {})
    started = time.perf_counter()
    for start in range(0, N, size):
        writer.BatchWrite(list(batch[start : start + size])).advance(sessions, {})
    engine.dispose()
    return round((time.perf_counter() - started) / N * 1e6, 1)


def main() -> None:
    try:
        import edgefleet.shared.histogram  # noqa: F401
    except ImportError:
        kinds = [("v1_summary", False)]
    else:
        kinds = [("v1_summary", False), ("v2_histogram", True)]
    import gc

    gc.freeze()  # as the controller does once started (edgefleet.controller.service)
    figures = {}
    for name, histogram in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            messages = payloads(histogram)
            figures[name] = stages(messages, Path(tmp)) | {"bytes": len(messages[0][1])}
            if histogram:  # the long run's payload
                figures[name]["write_at_100k_rows_us"] = grown_write(messages, Path(tmp), 100_000)
            print(name, figures[name])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
