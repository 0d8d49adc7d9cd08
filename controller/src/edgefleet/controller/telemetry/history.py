"""Keeping telemetry history bounded: per-minute and per-hour rollups, then retention.

Raw windows are rolled up into minute buckets, minute buckets into hour buckets (latency
histograms merged exactly, v1 summaries as their request-weighted mean), each up to a
watermark (``RollupMarkRow``) a little behind now; rows are deleted once they are past their
retention *and* rolled up. Windows that arrive after their bucket was rolled up stay in the raw
table but are not in the rollup.

Concurrency: the asyncio task ``telemetry-history`` runs one pass every interval; each pass's
database work runs on a worker thread, one transaction per step.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet.tables import SystemSampleRow, TelemetryRow
from edgefleet.controller.registry.db import aware
from edgefleet.controller.telemetry.buckets import bucket_latency, bucket_system, floor_to
from edgefleet.controller.telemetry.sources import RAW, read_latency, read_system
from edgefleet.controller.telemetry.tables import (
    LatencyRollupRow,
    RollupMarkRow,
    SystemRollupRow,
)

log = logging.getLogger(__name__)

MINUTE = 60
HOUR = 3600
# Source time rolled up per transaction, bounding memory after a long stop: rows are streamed and
# merged as they come, so what is held is the buckets written: 30 min of 1,000 devices is 30k
# minute buckets (a histogram each, a few hundred bytes to 8 KB), 6 h of them 6k hour buckets.
MAX_SPAN = {MINUTE: timedelta(minutes=30), HOUR: timedelta(hours=6)}


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each resolution is kept, and how far behind now rollups stay (late windows)."""

    raw_s: float = 24 * 3600.0
    minute_s: float = 14 * 24 * 3600.0
    hour_s: float = 400 * 24 * 3600.0
    grace_s: float = 120.0


@dataclass(frozen=True)
class PassReport:
    minute_buckets: int
    hour_buckets: int
    deleted: int


def rollup_mark(session: Session, resolution_s: int) -> datetime | None:
    row = session.get(RollupMarkRow, resolution_s)
    return aware(row.rolled_until) if row is not None else None


def _earliest(session: Session, source: int) -> datetime | None:
    if source == RAW:
        first = session.scalar(select(func.min(TelemetryRow.window_end)))
        first_sys = session.scalar(select(func.min(SystemSampleRow.window_end)))
        candidates = [aware(t) for t in (first, first_sys) if t is not None]
        return min(candidates) if candidates else None
    first = session.scalar(
        select(func.min(LatencyRollupRow.bucket_start)).where(
            LatencyRollupRow.resolution_s == source
        )
    )
    first_sys = session.scalar(
        select(func.min(SystemRollupRow.bucket_start)).where(SystemRollupRow.resolution_s == source)
    )
    candidates = [aware(t) for t in (first, first_sys) if t is not None]
    return min(candidates) if candidates else None


def roll_up(session: Session, resolution_s: int, source: int, until: datetime) -> int:
    """Roll ``source`` up into ``resolution_s`` buckets from the watermark up to ``until``
    (at most ``MAX_SPAN`` of it), move the watermark, and return the buckets written."""
    end = floor_to(until, resolution_s)
    start = rollup_mark(session, resolution_s)
    if start is None:
        earliest = _earliest(session, source)
        if earliest is None:
            return 0
        start = floor_to(earliest, resolution_s)
    end = min(end, start + MAX_SPAN.get(resolution_s, timedelta(hours=6)))
    if end <= start:
        return 0
    latency = bucket_latency(read_latency(session, source, start, end), resolution_s)
    for (device_id, model_id, version, bucket), acc in latency.items():
        # Both parts of the bucket's latency, each mergeable on into hours (see tables.py).
        merged = acc.latency
        p50, p95, p99 = merged.summary_percentiles()
        session.add(
            LatencyRollupRow(
                resolution_s=resolution_s, bucket_start=bucket, device_id=device_id,
                model_id=model_id, version=version, windows=acc.windows, requests=acc.requests,
                errors=acc.errors, p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=acc.max_ms,
                latency_hist=merged.histogram, summary_requests=merged.summary_weight,
            )
        )  # fmt: skip
    system = bucket_system(read_system(session, source, start, end), resolution_s)
    for (device_id, bucket), sys_acc in system.items():
        cpu, used, total, rss, temperature = sys_acc.means()
        session.add(
            SystemRollupRow(
                resolution_s=resolution_s, bucket_start=bucket, device_id=device_id,
                samples=sys_acc.samples, cpu_percent=cpu, mem_used_bytes=used,
                mem_total_bytes=total, rss_bytes=rss, temperature_c=temperature,
            )
        )  # fmt: skip
    mark = session.get(RollupMarkRow, resolution_s)
    if mark is None:
        session.add(RollupMarkRow(resolution_s=resolution_s, rolled_until=end))
    else:
        mark.rolled_until = end
    return len(latency) + len(system)


def apply_retention(session: Session, policy: RetentionPolicy, now: datetime) -> int:
    """Delete what is past its retention and already rolled up; return the rows deleted."""
    deleted = 0
    minute_mark = rollup_mark(session, MINUTE)
    if minute_mark is not None:
        cutoff = min(now - timedelta(seconds=policy.raw_s), minute_mark)
        for table, column in (
            (TelemetryRow, TelemetryRow.window_end),
            (SystemSampleRow, SystemSampleRow.window_end),
        ):
            deleted += session.execute(delete(table).where(column < cutoff)).rowcount or 0  # type: ignore[attr-defined]
    hour_mark = rollup_mark(session, HOUR)
    limits = [(MINUTE, now - timedelta(seconds=policy.minute_s))]
    limits.append((HOUR, now - timedelta(seconds=policy.hour_s)))
    for resolution, cutoff in limits:
        if resolution == MINUTE:
            if hour_mark is None:
                continue
            cutoff = min(cutoff, hour_mark)
        for rollup in (LatencyRollupRow, SystemRollupRow):
            result = session.execute(
                delete(rollup).where(
                    rollup.resolution_s == resolution, rollup.bucket_start < cutoff
                )
            )
            deleted += result.rowcount or 0  # type: ignore[attr-defined]
    return deleted


def run_pass(sessions: sessionmaker[Session], policy: RetentionPolicy, now: datetime) -> PassReport:
    """One rollup-and-retention pass; each step in its own transaction."""
    minute = hour = 0
    while True:
        with sessions.begin() as session:
            written = roll_up(session, MINUTE, RAW, now - timedelta(seconds=policy.grace_s))
        minute += written
        with sessions() as session:
            mark = rollup_mark(session, MINUTE)
        if mark is None or mark >= floor_to(now - timedelta(seconds=policy.grace_s), MINUTE):
            break
    while True:
        with sessions() as session:
            minute_mark = rollup_mark(session, MINUTE)
        if minute_mark is None:
            break
        with sessions.begin() as session:
            hour += roll_up(session, HOUR, MINUTE, minute_mark)
        with sessions() as session:
            mark = rollup_mark(session, HOUR)
        if mark is None or mark >= floor_to(minute_mark, HOUR):
            break
    with sessions.begin() as session:
        deleted = apply_retention(session, policy, now)
    return PassReport(minute, hour, deleted)


class HistoryKeeper:
    """The background task that rolls telemetry up and enforces retention."""

    def __init__(
        self, sessions: sessionmaker[Session], policy: RetentionPolicy, *, interval_s: float
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.interval_s = interval_s
        self.passes = 0
        self.last: PassReport | None = None

    async def run(self) -> None:
        while True:
            try:
                self.last = await asyncio.to_thread(
                    run_pass, self.sessions, self.policy, datetime.now(UTC)
                )
                self.passes += 1
            except Exception:
                log.exception("telemetry rollup pass failed; retrying next interval")
            await asyncio.sleep(self.interval_s)
