"""Applying device messages to the database: upserts of devices, events, telemetry, convergence.

Synchronous; called with one open transaction per batch. Redelivered messages change nothing
(events are keyed by their id; state is idempotent).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

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
    devices: dict[str, DeviceRow] = {}
    now = datetime.now(UTC)
    for message in batch:
        if isinstance(message, Hello):
            _apply_hello(_device(session, devices, message.device_id), message, now)
        elif isinstance(message, DeviceState):
            row = _device(session, devices, message.device_id)
            _apply_state(session, row, message, now)
        elif isinstance(message, Event):
            _apply_event(session, message, now)
            if message.type is not EventType.ERROR:
                _device(session, devices, message.device_id).last_seen = now
        elif isinstance(message, Telemetry):
            _apply_telemetry(session, _device(session, devices, message.device_id), message, now)


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


def _apply_state(session: Session, row: DeviceRow, state: DeviceState, now: datetime) -> None:
    row.status = state.status.value
    row.online = state.status is not DeviceStatus.OFFLINE
    row.detail = state.detail
    if state.status is DeviceStatus.OFFLINE:
        return  # the last will carries no slots: keep what we knew
    row.active = state.active.model_dump(mode="json") if state.active else None
    row.previous = state.previous.model_dump(mode="json") if state.previous else None
    row.reported_last_serial = max(row.reported_last_serial or 0, state.last_serial)
    row.last_seen = now
    if state.active is None:
        return
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


def _apply_telemetry(session: Session, row: DeviceRow, telemetry: Telemetry, now: datetime) -> None:
    for stats in telemetry.models:
        latency = stats.latency_ms
        session.add(
            TelemetryRow(
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
    session.add(
        SystemSampleRow(
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
    row.last_telemetry = telemetry.model_dump(mode="json")
    row.last_seen = now
    if row.status in {"offline", "unknown"}:
        row.status = "serving" if row.active else "idle"
    row.online = True
