"""Series queries: a device's (or a group's) latency, resources and swap markers over a time
range, stitched from hour rollups, minute rollups and raw windows, bucketed to a plottable step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.tables import EventRow, TelemetryRow
from edgefleet.controller.registry.db import aware
from edgefleet.controller.telemetry.buckets import (
    SystemSample,
    bucket_latency,
    bucket_system,
    nice_step,
)
from edgefleet.controller.telemetry.history import HOUR, MINUTE, RetentionPolicy, rollup_mark
from edgefleet.controller.telemetry.sources import RAW, read_latency, read_system

MARKER_EVENTS = ("swapped", "rolled_back")
RESOLUTION_NAMES = {RAW: "raw", MINUTE: "minute", HOUR: "hour"}


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    t_ms: int  # bucket start, Unix milliseconds
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    # False when v1 agents' summaries are in it: their percentiles enter as a request-weighted
    # mean, not a percentile of the merged requests.
    exact: bool = True


@dataclass(frozen=True, slots=True)
class SystemPoint:
    t_ms: int
    cpu_percent: float
    mem_used_bytes: float
    mem_total_bytes: float
    rss_bytes: float
    temperature_c: float | None


@dataclass(frozen=True, slots=True)
class Marker:
    t_ms: int
    device_id: str
    type: str
    version: str | None
    reason: str | None


@dataclass
class DeviceSeries:
    """Everything a chart of one device or group needs."""

    since: datetime
    until: datetime
    step_s: int
    resolution: str
    latency: dict[tuple[str, str], list[LatencyPoint]] = field(default_factory=dict)
    system: list[SystemPoint] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)


def _ms(moment: datetime) -> int:
    return int(aware(moment).timestamp() * 1000)


def _plan(
    session: Session, policy: RetentionPolicy, since: datetime, until: datetime, now: datetime
) -> list[tuple[int, datetime, datetime]]:
    """Which resolution covers which part of ``[since, until)``: coarse first, raw last."""
    minute_mark = rollup_mark(session, MINUTE)
    if since >= now - timedelta(seconds=policy.raw_s) or minute_mark is None:
        return [(RAW, since, until)]
    plan: list[tuple[int, datetime, datetime]] = []
    hour_mark = rollup_mark(session, HOUR)
    minute_from = since
    if since < now - timedelta(seconds=policy.minute_s) and hour_mark is not None:
        plan.append((HOUR, since, min(hour_mark, until)))
        minute_from = max(since, hour_mark)
    plan.append((MINUTE, minute_from, min(minute_mark, until)))
    plan.append((RAW, max(since, minute_mark), until))
    return [(res, start, end) for res, start, end in plan if end > start]


def query_series(
    session: Session,
    *,
    device_ids: Sequence[str] | None,
    since: datetime,
    until: datetime,
    now: datetime,
    policy: RetentionPolicy,
    model_id: str | None = None,
    max_points: int = 300,
    step_s: int | None = None,
) -> DeviceSeries:
    """Series over ``[since, until)`` for ``device_ids`` (``None``: the whole fleet).

    Devices are merged (latency percentiles from the merged histograms of every window in a
    point, mean resources); latency is keyed by ``(model_id, version)``.
    """
    since, until, now = aware(since), aware(until), aware(now)
    plan = _plan(session, policy, since, until, now)
    coarsest = max((res for res, _, _ in plan), default=RAW)
    step = step_s or nice_step((until - since).total_seconds(), max_points, max(1, coarsest))
    latency = chain.from_iterable(
        read_latency(session, resolution, start, end, device_ids, model_id)
        for resolution, start, end in plan
    )
    buckets = bucket_latency(latency, step, per_device=False)
    system: list[SystemSample] = []
    for resolution, start, end in plan:
        system += read_system(session, resolution, start, end, device_ids)
    series = DeviceSeries(since, until, step, RESOLUTION_NAMES.get(coarsest, str(coarsest)))
    for (_device, model, version, bucket), acc in sorted(buckets.items(), key=lambda kv: kv[0][3]):
        p50, p95, p99 = acc.percentiles()
        series.latency.setdefault((model, version), []).append(
            LatencyPoint(_ms(bucket), p50, p95, p99, acc.requests, acc.errors, acc.exact)
        )
    for (_device, bucket), sys_acc in sorted(
        bucket_system(system, step, per_device=False).items(), key=lambda kv: kv[0][1]
    ):
        cpu, used, total, rss, temperature = sys_acc.means()
        series.system.append(SystemPoint(_ms(bucket), cpu, used, total, rss, temperature))
    series.markers = swap_markers(session, device_ids, since, until)
    return series


def swap_markers(
    session: Session, device_ids: Sequence[str] | None, since: datetime, until: datetime
) -> list[Marker]:
    """``swapped`` and ``rolled_back`` events in the range, oldest first (at most 500)."""
    query = (
        select(EventRow.at, EventRow.device_id, EventRow.type, EventRow.version, EventRow.reason)
        .where(EventRow.type.in_(MARKER_EVENTS), EventRow.at >= since, EventRow.at < until)
        .order_by(EventRow.at)
        .limit(500)
    )
    if device_ids is not None:
        query = query.where(EventRow.device_id.in_(list(device_ids)))
    return [Marker(_ms(at), d, kind, v, r) for at, d, kind, v, r in session.execute(query)]


def auto_since(
    session: Session,
    device_ids: Sequence[str] | None,
    since: datetime,
    now: datetime,
    minimum: timedelta = timedelta(minutes=2),
) -> datetime:
    """Where a chart over ``[since, now)`` should start: at its first raw window when that is
    later (a young fleet's chart is not an empty plot with a sliver of data), but at least
    ``minimum`` before now."""
    query = select(func.min(TelemetryRow.window_end)).where(TelemetryRow.window_end >= since)
    if device_ids is not None:
        query = query.where(TelemetryRow.device_id.in_(list(device_ids)))
    first = session.scalar(query)
    if first is None:
        return max(since, now - minimum)
    return max(since, min(aware(first) - timedelta(seconds=5), now - minimum))
