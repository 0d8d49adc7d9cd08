"""Applying device messages to the database: upserts of devices, events and telemetry.

Synchronous; called with one open transaction per batch. Redelivered messages change nothing
(events are keyed by their id; state is idempotent, and a state older than the one stored, by
its ``seq``, is dropped). This module records what devices report; the rollout engine derives
every rollout-device state from it and is the only writer of those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
from edgefleet.shared import (
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    Hello,
    OutcomeResult,
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

# A v1 agent reports no outcome in its state: its failure events stand in for one.
V1_OUTCOME_OF_EVENT = {
    EventType.MANIFEST_REFUSED: OutcomeResult.REFUSED,
    EventType.VERIFY_FAILED: OutcomeResult.REFUSED,
    EventType.LOAD_FAILED: OutcomeResult.REFUSED,
    EventType.DOWNLOAD_FAILED: OutcomeResult.DOWNLOAD_FAILED,
    EventType.VALIDATION_FAILED: OutcomeResult.VALIDATION_FAILED,
    EventType.ERROR: OutcomeResult.IO_ERROR,  # a v1 agent gives up on a local error
}


def _device(session: Session, cache: dict[str, DeviceRow], device_id: str) -> DeviceRow:
    row = cache.get(device_id) or session.get(DeviceRow, device_id)
    if row is None:
        row = DeviceRow(id=device_id)
        session.add(row)
    cache[device_id] = row
    return row


def write_batch(
    session: Session,
    batch: Iterable[WireModel],
    *,
    versions: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> None:
    """Apply a batch. Telemetry is applied after the batch's hello, state and events (the order
    ``FleetIngest`` takes them in), in bulk: per-row ORM work made ingest ten times slower than
    the broker delivers.

    ``versions`` maps device ids to the wire version of their latest envelopes.
    """
    messages = list(batch)
    now = now or datetime.now(UTC)
    versions = versions or {}
    telemetry = [m for m in messages if isinstance(m, Telemetry)]
    priority = [m for m in messages if not isinstance(m, Telemetry)]
    ids = {getattr(m, "device_id", "") for m in priority}
    devices: dict[str, DeviceRow] = {}
    if ids:
        query = select(DeviceRow).where(DeviceRow.id.in_(ids)).options(*_WRITE_ONLY_COLUMNS)
        devices = {r.id: r for r in session.scalars(query)}
    for message in priority:
        if isinstance(message, Hello):
            row = _device(session, devices, message.device_id)
            _apply_hello(row, message, now, versions.get(message.device_id))
        elif isinstance(message, DeviceState):
            row = _device(session, devices, message.device_id)
            _apply_state(row, message, now)
            if message.status is not DeviceStatus.OFFLINE and message.device_id in versions:
                row.wire_version = versions[message.device_id]  # (the will is fixed at connect)
        elif isinstance(message, Event):
            row = _device(session, devices, message.device_id)
            if _apply_event(session, message, now) and (row.wire_version or 1) < 2:
                _v1_outcome(row, message)
            if message.type is not EventType.ERROR:
                row.last_seen = now
    if telemetry:
        _write_telemetry(session, telemetry, now)


def _table(mapped: type[DeviceRow | TelemetryRow | SystemSampleRow]) -> Table:
    return cast(Table, mapped.__table__)


def _write_telemetry(session: Session, batch: list[Telemetry], now: datetime) -> None:
    """Insert the points and samples in bulk, then update each device once."""
    session.flush()  # the ORM changes of the batch's other messages go first
    latest = {t.device_id: t for t in batch}
    known = {
        device_id: (status, active, online, since)
        for device_id, status, active, online, since in session.execute(
            select(
                DeviceRow.id,
                DeviceRow.status,
                DeviceRow.active,
                DeviceRow.online,
                DeviceRow.online_since,
            ).where(DeviceRow.id.in_(latest))
        )
    }
    for device_id in latest.keys() - known.keys():  # telemetry before any hello
        session.add(DeviceRow(id=device_id))
        known[device_id] = ("unknown", None, False, None)
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
        status, active, online, since = known[device_id]
        if status in {"offline", "unknown"}:
            status = "serving" if active else "idle"
        updates.append(
            {
                "device": device_id,
                "status": status,
                "online": True,
                "online_since": since if online and since is not None else now,
                "last_seen": now,
                "last_telemetry": telemetry.model_dump(mode="json"),
            }
        )
    devices = _table(DeviceRow)
    connection.execute(update(devices).where(devices.c.id == bindparam("device")), updates)


def _apply_hello(row: DeviceRow, hello: Hello, now: datetime, version: int | None) -> None:
    row.arch = hello.hardware.arch
    row.cpu_count = hello.hardware.cpu_count
    row.ram_bytes = hello.hardware.ram_bytes
    row.os = hello.hardware.os
    row.agent_version = hello.agent_version
    row.runtimes = [r.model_dump() for r in hello.runtimes]
    row.accelerators = list(hello.accelerators)
    row.labels = dict(hello.labels)
    if version is not None:
        row.wire_version = version
    _set_online(row, True, now)
    row.last_seen = now


def _set_online(row: DeviceRow, online: bool, now: datetime) -> None:
    """Flip the online flag, remembering since when the device is on or off line."""
    if online and not row.online:
        row.online_since = now
    elif not online and (row.online or row.offline_since is None):
        row.offline_since = now
    row.online = online


def _apply_state(row: DeviceRow, state: DeviceState, now: datetime) -> None:
    offline = state.status is DeviceStatus.OFFLINE
    if state.seq is not None:
        if not offline and row.state_seq is not None and state.seq <= row.state_seq:
            return  # delivered after a newer state of the same device: stale
        if not offline:
            row.state_seq = state.seq
    row.status = state.status.value
    _set_online(row, not offline, now)
    row.detail = state.detail
    if offline:
        return  # the last will carries no slots: keep what we knew
    row.active = state.active.model_dump(mode="json") if state.active else None
    row.previous = state.previous.model_dump(mode="json") if state.previous else None
    row.reported_last_serial = max(row.reported_last_serial or 0, state.last_serial)
    if state.last_outcome is not None:
        row.last_outcome = state.last_outcome.model_dump(mode="json")
    if state.seq is not None:  # a v2 state says what is in progress, including nothing
        row.progress = state.progress.model_dump(mode="json") if state.progress else None
    row.last_seen = now


def _apply_event(session: Session, event: Event, now: datetime) -> bool:
    """Store an event once; False when it was a redelivery."""
    event_id = str(event.event_id)
    if session.scalar(select(EventRow.id).where(EventRow.event_id == event_id)) is not None:
        return False
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
    return True


def _v1_outcome(row: DeviceRow, event: Event) -> None:
    """A v1 agent's failure event about a serial, recorded as the outcome it stands for."""
    result = V1_OUTCOME_OF_EVENT.get(event.type)
    if result is None or event.serial is None or event.serial < 1:
        return
    current = row.last_outcome or {}
    if int(current.get("serial") or 0) > event.serial:
        return  # never let an older serial's failure replace a newer outcome
    row.last_outcome = {
        "serial": event.serial,
        "sha256": None,
        "result": result.value,
        "reason": (event.reason or "no reason given")
        if event.type.value == result.value
        else f"{event.type.value}: {event.reason or 'no reason given'}",
        "at": event.at.isoformat(),
    }


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
