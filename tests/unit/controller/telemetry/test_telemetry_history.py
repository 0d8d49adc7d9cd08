"""Rollups into minutes and hours, watermarks, and retention, on a real SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from telemetry_rows import add_window

from edgefleet.controller.fleet.tables import SystemSampleRow, TelemetryRow
from edgefleet.controller.telemetry.history import (
    HOUR,
    MINUTE,
    RetentionPolicy,
    rollup_mark,
    run_pass,
)
from edgefleet.controller.telemetry.tables import LatencyRollupRow, SystemRollupRow

NOW = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)


def count(session, table, **where) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(getattr(table, column) == value)
    return session.scalar(query)


def test_minute_and_hour_rollups_merge_windows_and_move_watermarks(sessions):
    start = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    with sessions.begin() as session:
        for i in range(3 * 60 * 2):  # one window every 30 s for three hours, two devices
            at = start + timedelta(seconds=30 * i)
            add_window(session, "a", at, p95=10.0, requests=10)
            add_window(session, "b", at, p95=20.0, requests=30, cpu=70.0)
    report = run_pass(sessions, RetentionPolicy(grace_s=120), NOW)
    with sessions() as session:
        minute_mark = rollup_mark(session, MINUTE)
        hour_mark = rollup_mark(session, HOUR)
        assert minute_mark == datetime(2026, 11, 25, 11, 58, tzinfo=UTC)  # grace: 2 min behind
        assert hour_mark == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
        minutes = count(session, LatencyRollupRow, resolution_s=MINUTE)
        assert minutes == 2 * (3 * 60 - 2)
        row = session.scalars(
            select(LatencyRollupRow).where(
                LatencyRollupRow.resolution_s == HOUR, LatencyRollupRow.device_id == "b"
            )
        ).first()
        assert row.windows == 120
        assert row.requests == 120 * 30
        assert row.p95_ms == 20.0
        system = session.scalars(
            select(SystemRollupRow).where(SystemRollupRow.resolution_s == MINUTE)
        ).first()
        assert system.samples == 2
        assert system.cpu_percent in {50.0, 70.0}
    assert report.minute_buckets == minutes * 2  # latency and system rows
    assert report.deleted == 0  # nothing is past the default retention yet

    again = run_pass(sessions, RetentionPolicy(grace_s=120), NOW)
    assert (again.minute_buckets, again.hour_buckets) == (0, 0)  # idempotent: nothing twice


def test_retention_deletes_only_what_is_old_and_rolled_up(sessions):
    with sessions.begin() as session:
        for minutes_ago in (300, 200, 100, 30, 1):
            add_window(session, "a", NOW - timedelta(minutes=minutes_ago), p95=5.0)
    policy = RetentionPolicy(raw_s=3600, minute_s=3 * 3600, hour_s=4 * 3600, grace_s=120)
    run_pass(sessions, policy, NOW)
    with sessions() as session:
        raw_left = sorted(
            round((NOW - t.replace(tzinfo=UTC)).total_seconds() / 60)
            for t in session.scalars(select(TelemetryRow.window_end))
        )
        assert raw_left == [1, 30]  # older than an hour and rolled up: gone
        assert count(session, SystemSampleRow) == 2
        minute_rows = session.scalars(
            select(LatencyRollupRow.bucket_start).where(LatencyRollupRow.resolution_s == MINUTE)
        ).all()
        # minute rollups older than three hours went once the hour rollup had them
        assert len(minute_rows) == 2
        hours = session.scalars(
            select(LatencyRollupRow.bucket_start).where(LatencyRollupRow.resolution_s == HOUR)
        ).all()
        # the 07:00 and 08:00 buckets start over four hours ago; 11:00 is not complete yet
        assert [h.hour for h in hours] == [10]


@pytest.mark.parametrize("gap_hours", [0, 30])
def test_a_long_stop_is_caught_up_in_bounded_steps(sessions, gap_hours):
    with sessions.begin() as session:
        add_window(session, "a", NOW - timedelta(hours=gap_hours, minutes=5), p95=1.0)
        add_window(session, "a", NOW - timedelta(minutes=5), p95=3.0)
    run_pass(sessions, RetentionPolicy(raw_s=10 * 86400), NOW)
    with sessions() as session:
        assert count(session, LatencyRollupRow, resolution_s=MINUTE) == (1 if gap_hours == 0 else 2)
        assert rollup_mark(session, MINUTE) == datetime(2026, 11, 25, 11, 58, tzinfo=UTC)
