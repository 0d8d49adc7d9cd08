"""Fleet-wide reads: events, telemetry series, health."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from edgefleet.controller.api.deps import ServiceDep, SessionDep
from edgefleet.controller.api.schemas import EventPublic, Health, TelemetryPoint
from edgefleet.controller.fleet.tables import DeviceRow, EventRow, TelemetryRow

router = APIRouter(prefix="/api", tags=["fleet"])


@router.get("/events", response_model=list[EventPublic])
def list_events(
    session: SessionDep,
    device_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventRow]:
    query = select(EventRow).order_by(EventRow.at.desc()).limit(limit)
    if device_id:
        query = query.where(EventRow.device_id == device_id)
    return list(session.scalars(query))


@router.get("/telemetry", response_model=list[TelemetryPoint])
def telemetry_series(
    session: SessionDep,
    device_id: str | None = None,
    model_id: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[TelemetryRow]:
    query = select(TelemetryRow).order_by(TelemetryRow.window_end.desc()).limit(limit)
    if device_id:
        query = query.where(TelemetryRow.device_id == device_id)
    if model_id:
        query = query.where(TelemetryRow.model_id == model_id)
    if since:
        query = query.where(TelemetryRow.window_end >= since)
    return list(reversed(list(session.scalars(query))))


@router.get("/health", response_model=Health)
def health(service: ServiceDep, session: SessionDep) -> Health:
    connected = bool(service.bridge and service.bridge.connected.is_set())
    ingest = service.ingest
    return Health(
        status="ok" if connected else "degraded",
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
            "backlog": ingest.backlog,
        }
        if ingest
        else {},
    )
