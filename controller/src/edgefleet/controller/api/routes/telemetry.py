"""Telemetry series for charts: one device or a label-selected group over a time range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from edgefleet.controller.api.deps import ServiceDep, SessionDep
from edgefleet.controller.api.errors import device_not_found
from edgefleet.controller.api.openapi import OPEN_ON_LOOPBACK, error_responses
from edgefleet.controller.api.schemas import DeviceIdPath, ModelIdQuery, Selector, UtcQueryTime
from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.rollouts.planner import matching_devices
from edgefleet.controller.telemetry.series import DeviceSeries, query_series

router = APIRouter(
    prefix="/api/series", tags=["telemetry"], responses=error_responses(400, 401, 403, 422)
)

MAX_RANGE = timedelta(days=400)
MAX_MINUTES = MAX_RANGE.days * 1440
RANGE_NOTE = (
    "The range is `[since, until)`: `until` defaults to now, `since` to `minutes` (default 60) "
    "before `until`. A range over 400 days keeps its last 400 days, and an empty one "
    "(`since` at or after `until`) has no points; `since` and `until` in the answer say which "
    "range it covers."
)
Since = Annotated[UtcQueryTime | None, Query(description="start of the range (inclusive)")]
Until = Annotated[UtcQueryTime | None, Query(description="end of the range (exclusive)")]
Minutes = Annotated[
    float | None, Query(gt=0, le=MAX_MINUTES, description="range length when `since` is not given")
]
MaxPoints = Annotated[int, Query(ge=10, le=2000, description="buckets per series, at most")]


class LatencySeriesPublic(BaseModel):
    """One model version's latency: each point's percentiles come from the merged histograms
    of every window in it, of every device in scope."""

    model_id: str
    version: str
    t: list[int] = Field(description="bucket starts, Unix milliseconds")
    p50_ms: list[float | None]
    p95_ms: list[float | None]
    p99_ms: list[float | None]
    requests: list[int]
    errors: list[int]
    exact: list[bool] = Field(
        description="false where v1 agents' summaries are in the point: their percentiles "
        "enter as a request-weighted mean, an approximation, not a percentile of the requests"
    )


class SystemSeriesPublic(BaseModel):
    t: list[int]
    cpu_percent: list[float]
    mem_used_bytes: list[float]
    mem_total_bytes: list[float]
    rss_bytes: list[float]
    temperature_c: list[float | None]


class MarkerPublic(BaseModel):
    t: int
    device_id: str
    type: str
    version: str | None
    reason: str | None


class SeriesPublic(BaseModel):
    """Columnar series, ready to plot: one ``t`` array per series, values aligned with it."""

    scope: str
    devices: int
    since: datetime
    until: datetime
    step_s: int
    resolution: str
    latency: list[LatencySeriesPublic]
    system: SystemSeriesPublic
    markers: list[MarkerPublic]


def series_public(scope: str, devices: int, series: DeviceSeries) -> SeriesPublic:
    return SeriesPublic(
        scope=scope,
        devices=devices,
        since=series.since,
        until=series.until,
        step_s=series.step_s,
        resolution=series.resolution,
        latency=[
            LatencySeriesPublic(
                model_id=model,
                version=version,
                t=[p.t_ms for p in points],
                p50_ms=[p.p50_ms for p in points],
                p95_ms=[p.p95_ms for p in points],
                p99_ms=[p.p99_ms for p in points],
                requests=[p.requests for p in points],
                errors=[p.errors for p in points],
                exact=[p.exact for p in points],
            )
            for (model, version), points in sorted(series.latency.items())
        ],
        system=SystemSeriesPublic(
            t=[p.t_ms for p in series.system],
            cpu_percent=[p.cpu_percent for p in series.system],
            mem_used_bytes=[p.mem_used_bytes for p in series.system],
            mem_total_bytes=[p.mem_total_bytes for p in series.system],
            rss_bytes=[p.rss_bytes for p in series.system],
            temperature_c=[p.temperature_c for p in series.system],
        ),
        markers=[
            MarkerPublic(
                t=m.t_ms, device_id=m.device_id, type=m.type, version=m.version, reason=m.reason
            )
            for m in series.markers
        ],
    )


def _before(moment: datetime, span: timedelta) -> datetime:
    """``moment - span``, or the first representable instant when that is before year 1."""
    try:
        return moment - span
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def time_range(
    since: datetime | None, until: datetime | None, minutes: float | None
) -> tuple[datetime, datetime, datetime]:
    """(since, until, now) of a series request, in UTC, as :data:`RANGE_NOTE` states."""
    now = datetime.now(UTC)
    end = until if until is not None else now
    start = since if since is not None else _before(end, timedelta(minutes=minutes or 60))
    start = max(start, _before(end, MAX_RANGE))
    return start, end, now


@router.get(
    "/devices/{device_id}",
    response_model=SeriesPublic,
    responses=error_responses(404, descriptions={404: "no such device"}),
    openapi_extra=OPEN_ON_LOOPBACK,
    description="One device's latency per model version, resources and swap markers.\n\n"
    + RANGE_NOTE,
)
def device_series(
    device_id: DeviceIdPath,
    service: ServiceDep,
    session: SessionDep,
    since: Since = None,
    until: Until = None,
    minutes: Minutes = None,
    model_id: ModelIdQuery = None,
    max_points: MaxPoints = 300,
) -> SeriesPublic:
    if session.get(DeviceRow, device_id) is None:
        raise device_not_found(device_id)
    start, end, now = time_range(since, until, minutes)
    series = query_series(
        session, device_ids=[device_id], since=start, until=end, now=now,
        policy=service.retention, model_id=model_id, max_points=max_points,
    )  # fmt: skip
    return series_public(f"device:{device_id}", 1, series)


@router.get(
    "/group",
    response_model=SeriesPublic,
    openapi_extra=OPEN_ON_LOOPBACK,
    description="A label-selected group (`site=plant-3`; `*` for the fleet), devices merged.\n\n"
    + RANGE_NOTE,
)
def group_series(
    service: ServiceDep,
    session: SessionDep,
    selector: Annotated[Selector, Query()] = "*",
    since: Since = None,
    until: Until = None,
    minutes: Minutes = None,
    model_id: ModelIdQuery = None,
    max_points: MaxPoints = 300,
) -> SeriesPublic:
    start, end, now = time_range(since, until, minutes)
    ids = (
        None
        if selector.strip() in {"", "*"}
        else [d.id for d in matching_devices(session, selector)]
    )
    series = query_series(
        session, device_ids=ids, since=start, until=end, now=now,
        policy=service.retention, model_id=model_id, max_points=max_points,
    )  # fmt: skip
    count = len(ids) if ids is not None else session.scalar(select(func.count(DeviceRow.id))) or 0
    return series_public(f"group:{selector}", count, series)
