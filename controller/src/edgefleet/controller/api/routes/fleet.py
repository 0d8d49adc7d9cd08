"""Fleet-wide reads: events, telemetry series, health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from edgefleet.controller.api.deps import ServiceDep, SessionDep
from edgefleet.controller.api.openapi import OPEN_ON_LOOPBACK, error_responses
from edgefleet.controller.api.schemas import (
    DeviceIdQuery,
    EventPublic,
    Health,
    ModelIdQuery,
    TelemetryPoint,
    UtcQueryTime,
)
from edgefleet.controller.fleet.tables import DeviceRow, EventRow, TelemetryRow

router = APIRouter(prefix="/api", tags=["fleet"], responses=error_responses(400, 401, 403, 422))


@router.get("/events", response_model=list[EventPublic], openapi_extra=OPEN_ON_LOOPBACK)
def list_events(
    session: SessionDep,
    device_id: DeviceIdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventRow]:
    """Events of the fleet (or one device), newest first."""
    query = select(EventRow).order_by(EventRow.at.desc()).limit(limit)
    if device_id is not None:
        query = query.where(EventRow.device_id == device_id)
    return list(session.scalars(query))


@router.get("/telemetry", response_model=list[TelemetryPoint], openapi_extra=OPEN_ON_LOOPBACK)
def telemetry_series(
    session: SessionDep,
    device_id: DeviceIdQuery = None,
    model_id: ModelIdQuery = None,
    since: Annotated[UtcQueryTime | None, Query(description="windows ending at or after")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[TelemetryRow]:
    """Raw telemetry windows, oldest first: the newest ``limit`` that match."""
    query = select(TelemetryRow).order_by(TelemetryRow.window_end.desc()).limit(limit)
    if device_id is not None:
        query = query.where(TelemetryRow.device_id == device_id)
    if model_id is not None:
        query = query.where(TelemetryRow.model_id == model_id)
    if since is not None:
        query = query.where(TelemetryRow.window_end >= since)
    return list(reversed(list(session.scalars(query))))


@router.get("/health", response_model=Health, openapi_extra=OPEN_ON_LOOPBACK)
def health(service: ServiceDep, session: SessionDep) -> Health:
    """Broker connection, database and ingest counters (``degraded`` while the broker is away)."""
    connected = bool(service.bridge and service.bridge.connected.is_set())
    ingest = service.ingest
    workers = service.ingest_workers
    # telemetry is not taken while an ingest worker is down, not yet subscribed, or stalled
    workers_up = workers is None or (
        workers.connected == len(workers.specs) and not workers.stalled
    )
    return Health(
        status="ok" if connected and workers_up else "degraded",
        broker_url=service.broker_url,
        broker_connected=connected,
        embedded_broker=service.embedded_broker,
        database=service.engine.url.get_backend_name(),
        devices=session.scalar(select(func.count()).select_from(DeviceRow)) or 0,
        ingest={
            "received": dict(ingest.counters.received),
            "malformed": ingest.counters.malformed,
            "telemetry_dropped": ingest.counters.telemetry_dropped,
            "written": ingest.counters.written,
            "backlog": ingest.total_backlog,
            "workers": {
                "configured": len(workers.specs) if workers else 0,
                "connected": workers.connected if workers else 0,
                "restarts": workers.restarts if workers else 0,
                "stalled": workers.stalled if workers else 0,
            },
        }
        if ingest
        else {},
    )
