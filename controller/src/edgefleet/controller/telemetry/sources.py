"""Reading telemetry samples from the raw tables and the rollup tables over a time range.

Raw windows are placed at their ``window_end``; rollup buckets at their ``bucket_start``.
Queries select plain columns and run on the session's connection (Core: no ORM row processing,
a third of the cost per row) with only portable SQL; latency, whose rows carry histograms, is
streamed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.tables import SystemSampleRow, TelemetryRow
from edgefleet.controller.registry.db import aware
from edgefleet.controller.telemetry.buckets import LatencySample, SystemSample
from edgefleet.controller.telemetry.tables import LatencyRollupRow, SystemRollupRow

RAW = 0  # resolution_s of raw points
STREAM_ROWS = 2000


def _in_devices(column: Any, device_ids: Sequence[str] | None) -> ColumnElement[bool]:
    return true() if device_ids is None else column.in_(list(device_ids))


def read_latency(
    session: Session,
    resolution_s: int,
    start: datetime,
    end: datetime,
    device_ids: Sequence[str] | None = None,
    model_id: str | None = None,
) -> Iterator[LatencySample]:
    """Latency samples with ``start <= at < end`` at one resolution (``RAW`` or a rollup's),
    streamed (``STREAM_ROWS`` at a time): callers merge them as they come, so a range of a
    large fleet is never held in memory at once."""
    if resolution_s == RAW:
        t = TelemetryRow
        query = select(
            t.window_end, t.device_id, t.model_id, t.version, t.requests, t.errors,
            t.p50_ms, t.p95_ms, t.p99_ms, t.max_ms, t.latency_hist,
        ).where(t.window_end >= start, t.window_end < end)  # fmt: skip
        query = query.where(_in_devices(t.device_id, device_ids))
        if model_id is not None:
            query = query.where(t.model_id == model_id)
        rows = session.connection().execute(query.execution_options(yield_per=STREAM_ROWS))
        for at, d, m, v, n, e, p50, p95, p99, mx, hist in rows:
            yield LatencySample.of_window(aware(at), d, m, v, n, e, (p50, p95, p99, mx), hist)
        return
    r = LatencyRollupRow
    rollup_query = select(
        r.bucket_start, r.device_id, r.model_id, r.version, r.windows, r.requests, r.errors,
        r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms, r.latency_hist, r.summary_requests,
    )  # fmt: skip
    rollup_query = rollup_query.where(
        r.resolution_s == resolution_s, r.bucket_start >= start, r.bucket_start < end
    )
    rollup_query = rollup_query.where(_in_devices(r.device_id, device_ids))
    if model_id is not None:
        rollup_query = rollup_query.where(r.model_id == model_id)
    buckets = session.connection().execute(rollup_query.execution_options(yield_per=STREAM_ROWS))
    for at, d, m, v, w, rq, e, p50, p95, p99, mx, hist, weight in buckets:
        yield LatencySample(aware(at), d, m, v, w, rq, e, p50, p95, p99, mx, hist, weight)


def read_system(
    session: Session,
    resolution_s: int,
    start: datetime,
    end: datetime,
    device_ids: Sequence[str] | None = None,
) -> list[SystemSample]:
    """Resource samples with ``start <= at < end`` at one resolution."""
    if resolution_s == RAW:
        s = SystemSampleRow
        query = select(
            s.window_end, s.device_id, s.cpu_percent, s.mem_used_bytes, s.mem_total_bytes,
            s.rss_bytes, s.temperature_c,
        ).where(s.window_end >= start, s.window_end < end)  # fmt: skip
        query = query.where(_in_devices(s.device_id, device_ids))
        return [
            SystemSample(aware(at), d, 1, cpu, used, total, rss, temp)
            for at, d, cpu, used, total, rss, temp in session.connection().execute(query)
        ]
    r = SystemRollupRow
    rollup_query = select(
        r.bucket_start, r.device_id, r.samples, r.cpu_percent, r.mem_used_bytes,
        r.mem_total_bytes, r.rss_bytes, r.temperature_c,
    )  # fmt: skip
    rollup_query = rollup_query.where(
        r.resolution_s == resolution_s, r.bucket_start >= start, r.bucket_start < end
    )
    rollup_query = rollup_query.where(_in_devices(r.device_id, device_ids))
    return [
        SystemSample(aware(at), d, n, cpu, used, total, rss, temp)
        for at, d, n, cpu, used, total, rss, temp in session.connection().execute(rollup_query)
    ]
