"""Applying device messages to the database: upserts of devices, events, telemetry, convergence.

Synchronous; called with one open transaction per batch. Redelivered messages change nothing
(events are keyed by their id; state is idempotent).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session, defer

from edgefleet.controller.fleet.tables import (
    DeviceRow,
    EventRow,
    SystemSampleRow,
    TelemetryRow,
)
from edgefleet.controller.rollouts.tables import RolloutDeviceRow
from edgefleet.shared import (
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    Hello,
    Telemetry,
    WireModel,
)

# Columns ingest only ever assigns: not loaded (nor JSON-decoded) with the batch's devices.
_WRITE_ONLY_COLUMNS = (
    defer(DeviceRow.last_telemetry),
    defer(DeviceRow.runtimes),
    defer(DeviceRow.accelerators),
    defer(DeviceRow.labels),
    defer(DeviceRow.previous),
)

FAILURE_EVENTS = frozenset(
    {
        EventType.MANIFEST_REFUSED,
        EventType.DOWNLOAD_FAILED,
        EventType.VERIFY_FAILED,
        EventType.LOAD_FAILED,
        EventType.VALIDATION_FAILED,
    }
)


def _device(session: Session, cache: dict[str, DeviceRow], device_id: str) -> DeviceRow:
    row = cache.get(device_id) or session.get(DeviceRow, device_id)
    if row is None:
        row = DeviceRow(id=device_id)
        session.add(row)
    cache[device_id] = row
    return row


def write_batch(session: Session, batch: Iterable[WireModel]) -> None:
    """Apply a batch. Telemetry is applied after the batch's hello, state and events (the order
    ``FleetIngest`` takes them in), in bulk: per-row ORM work made ingest ten times slower than
    the broker delivers."""
    messages = list(batch)
    now = datetime.now(UTC)
    telemetry = [m for m in messages if isinstance(m, Telemetry)]
    priority = [m for m in messages if not isinstance(m, Telemetry)]
    ids = {getattr(m, "device_id", "") for m in priority}
    devices: dict[str, DeviceRow] = {}
    awaiting: set[str] = set()
    if ids:
        query = select(DeviceRow).where(DeviceRow.id.in_(ids)).options(*_WRITE_ONLY_COLUMNS)
        devices = {r.id: r for r in session.scalars(query)}
        awaiting = set(
            session.scalars(
                select(RolloutDeviceRow.device_id).where(
                    RolloutDeviceRow.device_id.in_(ids),
                    RolloutDeviceRow.state.in_(("sent", "reverting")),
                )
            )
        )
    for message in priority:
        if isinstance(message, Hello):
            _apply_hello(_device(session, devices, message.device_id), message, now)
        elif isinstance(message, DeviceState):
            row = _device(session, devices, message.device_id)
            _apply_state(session, row, message, now, message.device_id in awaiting)
        elif isinstance(message, Event):
            _apply_event(session, message, now)
            if message.type is not EventType.ERROR:
                _device(session, devices, message.device_id).last_seen = now
    if telemetry:
        _write_telemetry(session, telemetry, now)


def _table(mapped: type[DeviceRow | TelemetryRow | SystemSampleRow]) -> Table:
    return cast(Table, mapped.__table__)


def _write_telemetry(session: Session, batch: list[Telemetry], now: datetime) -> None:
    """Insert the points and samples in bulk, then update each device once."""
    session.flush()  # the ORM changes of the batch's other messages go first
    latest = {t.device_id: t for t in batch}
    known = {
        device_id: (status, active)
        for device_id, status, active in session.execute(
            select(DeviceRow.id, DeviceRow.status, DeviceRow.active).where(DeviceRow.id.in_(latest))
        )
    }
    for device_id in latest.keys() - known.keys():  # telemetry before any hello
        session.add(DeviceRow(id=device_id))
        known[device_id] = ("unknown", None)
    session.flush()
    points: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for telemetry in batch:
        _telemetry_rows(telemetry, points, samples)
    connection = session.connection()  # Core executemany: no ORM bookkeeping per row
    if points:
        connection.execute(insert(_table(TelemetryRow)), points)
    connection.execute(insert(_table(SystemSampleRow)), samples)
    updates = []
    for device_id, telemetry in latest.items():
        status, active = known[device_id]
        if status in {"offline", "unknown"}:
            status = "serving" if active else "idle"
        updates.append(
            {
                "device": device_id,
                "status": status,
                "online": True,
                "last_seen": now,
                "last_telemetry": telemetry.model_dump(mode="json"),
            }
        )
    devices = _table(DeviceRow)
    connection.execute(update(devices).where(devices.c.id == bindparam("device")), updates)


def _apply_hello(row: DeviceRow, hello: Hello, now: datetime) -> None:
    row.arch = hello.hardware.arch
    row.cpu_count = hello.hardware.cpu_count
    row.ram_bytes = hello.hardware.ram_bytes
    row.os = hello.hardware.os
    row.agent_version = hello.agent_version
    row.runtimes = [r.model_dump() for r in hello.runtimes]
    row.accelerators = list(hello.accelerators)
    row.labels = dict(hello.labels)
    row.online = True
    row.last_seen = now


def _apply_state(
    session: Session, row: DeviceRow, state: DeviceState, now: datetime, awaiting: bool = True
) -> None:
    row.status = state.status.value
    row.online = state.status is not DeviceStatus.OFFLINE
    row.detail = state.detail
    if state.status is DeviceStatus.OFFLINE:
        return  # the last will carries no slots: keep what we knew
    row.active = state.active.model_dump(mode="json") if state.active else None
    row.previous = state.previous.model_dump(mode="json") if state.previous else None
    row.reported_last_serial = max(row.reported_last_serial or 0, state.last_serial)
    row.last_seen = now
    if state.active is None or not awaiting:
        return  # no rollout waits on this device: spare the query
    pending = session.scalars(
        select(RolloutDeviceRow).where(
            RolloutDeviceRow.device_id == state.device_id,
            RolloutDeviceRow.state.in_(("sent", "reverting")),
            RolloutDeviceRow.serial == state.active.serial,
        )
    )
    for target in pending:
        if target.sha256 == state.active.sha256:
            target.state = "active" if target.state == "sent" else "rolled_back"
            target.converged_at = now
            target.updated_at = now


def _apply_event(session: Session, event: Event, now: datetime) -> None:
    event_id = str(event.event_id)
    if session.scalar(select(EventRow.id).where(EventRow.event_id == event_id)) is not None:
        return  # redelivered
    session.add(
        EventRow(
            event_id=event_id,
            device_id=event.device_id,
            type=event.type.value,
            at=event.at,
            model_id=event.model_id,
            version=event.version,
            serial=event.serial,
            reason=event.reason,
            figures=dict(event.figures),
            received_at=now,
        )
    )
    session.flush()
    if event.serial is None:
        return
    if event.type in FAILURE_EVENTS:
        states: tuple[str, ...] = ("sent",)
        new_state = "failed"
    elif event.type is EventType.ROLLED_BACK:
        states, new_state = ("sent", "active"), "rolled_back"
    else:
        return
    for target in session.scalars(
        select(RolloutDeviceRow).where(
            RolloutDeviceRow.device_id == event.device_id,
            RolloutDeviceRow.serial == event.serial,
            RolloutDeviceRow.state.in_(states),
        )
    ):
        target.state = new_state
        target.reason = f"{event.type.value}: {event.reason or ''}".strip()
        target.updated_at = now


def _telemetry_rows(
    telemetry: Telemetry, points: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> None:
    for stats in telemetry.models:
        latency = stats.latency_ms
        points.append(
            dict(
                device_id=telemetry.device_id,
                window_start=telemetry.window_start,
                window_end=telemetry.window_end,
                model_id=stats.model_id,
                version=stats.version,
                requests=stats.requests,
                errors=stats.errors,
                client_errors=stats.client_errors,
                p50_ms=latency.p50 if latency else None,
                p95_ms=latency.p95 if latency else None,
                p99_ms=latency.p99 if latency else None,
                max_ms=latency.max if latency else None,
                throughput_rps=stats.throughput_rps,
            )
        )
    system = telemetry.system
    samples.append(
        dict(
            device_id=telemetry.device_id,
            window_end=telemetry.window_end,
            cpu_percent=system.cpu_percent,
            process_cpu_percent=system.process_cpu_percent,
            rss_bytes=system.rss_bytes,
            mem_used_bytes=system.mem_used_bytes,
            mem_total_bytes=system.mem_total_bytes,
            temperature_c=system.temperature_c,
            disk_free_bytes=system.disk_free_bytes,
        )
    )
