"""The writer's bulk statements (the driver's executemany of tuples, each parameter's bind
processor applied once per column) store exactly what SQLAlchemy Core's executemany of dicts
stores, on SQLite and on PostgreSQL; a batch's events are stored once however often they are
delivered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.orm import Session

from edgefleet.controller.fleet import writer
from edgefleet.controller.fleet.tables import DeviceRow, EventRow, SystemSampleRow, TelemetryRow
from edgefleet.shared import (
    Event,
    EventType,
    LatencyHistogram,
    LatencySummary,
    ModelStats,
    SystemStats,
    Telemetry,
)
from edgefleet.shared.histogram import Histogram

START = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def window(device_id: str, k: int) -> Telemetry:
    """Windows that between them exercise every column: with and without a histogram or a
    summary, a temperature or none, microseconds or none, a second model."""
    end = START + timedelta(seconds=10 * k, microseconds=0 if k % 3 == 0 else 1234 * k)
    latencies = [0.5 + (i * 7 % 50) / 10 for i in range(40 + k)]
    hist = LatencyHistogram.model_validate(Histogram.of_values(latencies).wire_fields())
    models = [
        ModelStats(
            model_id="m",
            version=str(1 + k % 2),
            requests=len(latencies),
            errors=k % 2,
            client_errors=k % 3,
            latency_ms=None
            if k % 2
            else LatencySummary(p50=1.0, p95=2.0 + k, p99=3.0 + k, max=9.5),
            throughput_rps=4.25,
            latency_hist=hist if k % 4 != 3 else None,
        )
    ]
    if k % 5 == 0:
        models.append(ModelStats(model_id="other", version="7", requests=0, errors=0))
    return Telemetry(
        device_id=device_id,
        window_start=end - timedelta(seconds=10),
        window_end=end,
        models=tuple(models),
        system=SystemStats(
            cpu_percent=12.5,
            process_cpu_percent=150.0 + k,
            rss_bytes=1 << 28,
            mem_used_bytes=3 << 30,
            mem_total_bytes=1 << 40,
            temperature_c=None if k % 2 else 48.5,
            disk_free_bytes=(1 << 41) + k,
        ),
    )


def rows_of(session: Session, table: Table) -> list[tuple[Any, ...]]:
    columns = [c for c in table.c if c.name != "id"]
    return [tuple(r) for r in session.execute(select(*columns).order_by(table.c.id))]


def test_bulk_inserts_store_what_core_stores(database) -> None:
    _, sessions = database
    windows = [window(f"dev-{i % 4}", i) for i in range(24)]
    points: list[tuple[Any, ...]] = []
    samples: list[tuple[Any, ...]] = []
    for w in windows:
        writer._telemetry_rows(w, points, samples)
    events = [
        (
            str(uuid.uuid4()), "dev-1", "swapped", START + timedelta(seconds=i),
            "m" if i % 2 else None, "2" if i % 2 else None, i or None,
            None if i % 2 else "a reason, with 'quotes' and ünïcode", {"p95_ms": 1.5 * i},
            START,
        )
        for i in range(5)
    ]  # fmt: skip
    cases = [
        (writer._TELEMETRY_INSERT, TelemetryRow, points),
        (writer._SYSTEM_INSERT, SystemSampleRow, samples),
        (writer._EVENT_INSERT, EventRow, events),
    ]
    for bulk, mapped, rows in cases:
        table = writer._table(mapped)
        with sessions.begin() as session:
            session.connection().execute(
                insert(table), [dict(zip(bulk.params, r, strict=True)) for r in rows]
            )
        with sessions() as session:
            expected = rows_of(session, table)
        with sessions.begin() as session:
            session.execute(delete(table))
        with sessions.begin() as session:
            bulk.execute(session.connection(), rows)
        with sessions() as session:
            assert rows_of(session, table) == expected, table.name
        assert len(expected) == len(rows)


def test_the_last_seen_update_stores_the_window_as_the_orm_reads_it(database) -> None:
    _, sessions = database
    with sessions.begin() as session:
        writer.write_batch(session, [window("pi", 0), window("pi", 1)])
    with sessions() as session:
        device = session.get(DeviceRow, "pi")
        assert device is not None
        latest = window("pi", 1)
        assert device.last_telemetry == latest.model_dump(
            mode="json", exclude={"models": {"__all__": {"latency_hist"}}}
        )
        assert device.last_seen is not None


def test_an_event_delivered_again_in_the_same_or_a_later_batch_is_stored_once(
    database,
) -> None:
    _, sessions = database
    first = Event(device_id="pi", type=EventType.SWAPPED, at=START, serial=2, figures={"x": 1.0})
    second = Event(device_id="pi", type=EventType.ERROR, at=START, reason="disk")
    with sessions.begin() as session:
        writer.write_batch(session, [first, first, second])
    with sessions.begin() as session:
        writer.write_batch(session, [second, first])
    with sessions() as session:
        stored = session.scalars(select(EventRow).order_by(EventRow.id)).all()
        assert [(e.event_id, e.type) for e in stored] == [
            (str(first.event_id), "swapped"),
            (str(second.event_id), "error"),
        ]
        assert stored[0].figures == {"x": 1.0}
        assert stored[1].reason == "disk"
        at = stored[0].at if stored[0].at.tzinfo else stored[0].at.replace(tzinfo=UTC)
        assert at == START
        assert session.scalar(select(func.count()).select_from(EventRow)) == 2


def test_a_timestamp_in_another_zone_is_stored_as_its_utc_instant(database) -> None:
    _, sessions = database
    east = timezone(timedelta(hours=5, minutes=30))
    event = Event.model_validate(
        {"device_id": "pi", "type": "booted", "at": START.astimezone(east).isoformat()}
    )
    with sessions.begin() as session:
        writer.write_batch(session, [event])
    with sessions() as session:
        stored = session.scalars(select(EventRow)).one()
        at = stored.at if stored.at.tzinfo else stored.at.replace(tzinfo=UTC)
        assert at == START
