"""Cost of exact latency merges on the controller: storing each window's histogram, rolling
windows up, and a fleet chart's series, on a real SQLite database.
Prints JSON on its last line.

    python bench/latency_merge.py [--devices 1000] [--minutes 15]

Each device sends one window every 10 s whose latencies spread over ~2.5 doublings (about 80
buckets at scale 5, what an agent serving a real model sends). Figures: the writer's cost per
telemetry message with histograms (wire v2) and with summaries alone (v1); the fleet chart's
query (every device over ``--minutes``, 120 points) from raw windows; one minute-rollup pass of
that range; the same chart read from the minute rollups.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet.writer import write_batch
from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory
from edgefleet.controller.telemetry.history import MINUTE, RAW, RetentionPolicy, roll_up
from edgefleet.controller.telemetry.series import query_series
from edgefleet.shared import (
    LatencyHistogram,
    LatencySummary,
    ModelStats,
    SystemStats,
    Telemetry,
    decode_versioned,
    encode,
)
from edgefleet.shared.histogram import Histogram

SYSTEM = SystemStats(
    cpu_percent=10.0, process_cpu_percent=1.0, rss_bytes=1, mem_used_bytes=1,
    mem_total_bytes=2, disk_free_bytes=1,
)  # fmt: skip


def windows(devices: int, minutes: int, end: datetime, wire: int) -> list[Telemetry]:
    rng = random.Random(wire)
    out = []
    for step in range(minutes * 6):
        at = end - timedelta(seconds=10 * step)
        for d in range(devices):
            values = [rng.lognormvariate(0.0, 0.5) for _ in range(100)]
            histogram = Histogram.of_values(values)
            stats = ModelStats(
                model_id="m", version="1", requests=100, errors=0,
                latency_ms=LatencySummary(
                    p50=histogram.percentile(0.5) or 0.0, p95=histogram.percentile(0.95) or 0.0,
                    p99=histogram.percentile(0.99) or 0.0, max=max(values),
                ),
                latency_hist=LatencyHistogram.model_validate(histogram.wire_fields()),
            )  # fmt: skip
            message = Telemetry(
                device_id=f"dev-{d:05d}", window_start=at - timedelta(seconds=10),
                window_end=at, models=(stats,), system=SYSTEM,
            )  # fmt: skip
            out.append(decode_versioned(encode(message, version=wire), Telemetry)[1])
    return out


def chart(
    sessions: sessionmaker[Session], policy: RetentionPolicy, since: datetime, now: datetime
) -> float:
    """Seconds to build the fleet chart's series (every device, 120 points)."""
    started = time.perf_counter()
    with sessions() as session:
        series = query_series(
            session, device_ids=None, since=since, until=now, now=now, policy=policy,
            max_points=120,
        )  # fmt: skip
    assert series.latency
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=15)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    results: dict[str, object] = {"devices": args.devices, "minutes": args.minutes}
    with tempfile.TemporaryDirectory() as tmp:
        for wire in (1, 2):
            engine = create_engine_for(f"sqlite:///{Path(tmp) / f'v{wire}.db'}")
            create_schema(engine)
            sessions = session_factory(engine)
            batch = windows(args.devices, args.minutes, now - timedelta(seconds=5), wire)
            started = time.perf_counter()
            for i in range(0, len(batch), 500):
                with sessions.begin() as session:
                    write_batch(session, batch[i : i + 500], now=now)
            write_us = (time.perf_counter() - started) / len(batch) * 1e6
            results[f"write_us_per_message_v{wire}"] = round(write_us, 1)
            policy = RetentionPolicy()
            since = now - timedelta(minutes=args.minutes)

            results[f"fleet_chart_raw_s_v{wire}"] = round(chart(sessions, policy, since, now), 3)
            started = time.perf_counter()
            with sessions.begin() as session:
                buckets = roll_up(session, MINUTE, RAW, now)
            results[f"minute_rollup_s_v{wire}"] = round(time.perf_counter() - started, 3)
            results[f"minute_buckets_v{wire}"] = buckets
            from_minutes = chart(sessions, RetentionPolicy(raw_s=0.0), since, now)
            results[f"fleet_chart_minute_s_v{wire}"] = round(from_minutes, 3)
            results[f"windows_v{wire}"] = len(batch)
            engine.dispose()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
