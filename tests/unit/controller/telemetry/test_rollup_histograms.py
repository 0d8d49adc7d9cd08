"""Histograms through storage, rollups and series, on SQLite and PostgreSQL: windows written by
the real writer, minute and hour rollups that give the same percentiles as the merged raw
windows, and v1 agents' summaries that still ingest and are marked approximate wherever they
are read."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet.tables import DeviceRow, TelemetryRow
from edgefleet.controller.fleet.writer import write_batch
from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory
from edgefleet.controller.telemetry.history import HOUR, MINUTE, RetentionPolicy, run_pass
from edgefleet.controller.telemetry.series import query_series
from edgefleet.controller.telemetry.tables import LatencyRollupRow
from edgefleet.shared import (
    LatencyHistogram,
    LatencySummary,
    ModelStats,
    SystemStats,
    Telemetry,
    decode_versioned,
    encode,
)
from edgefleet.shared.histogram import Histogram

NOW = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SYSTEM = SystemStats(
    cpu_percent=10.0, process_cpu_percent=1.0, rss_bytes=1, mem_used_bytes=1,
    mem_total_bytes=2, disk_free_bytes=1,
)  # fmt: skip
EVERYTHING = RetentionPolicy()  # raw windows kept for a day: series read them
MINUTES = RetentionPolicy(raw_s=1800)  # series read minute rollups before the last 30 min
HOURS = RetentionPolicy(raw_s=1800, minute_s=3600)  # and hour rollups before the last hour


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """The controller's schema, as its migrations build it."""
    engine = create_engine_for(database_url)
    create_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def window(
    device_id: str, end: datetime, values: list[float], *, version: str = "1", wire: int = 2
) -> Telemetry:
    """A 30 s window as an agent of wire ``wire`` sends it, decoded as the controller does."""
    histogram = Histogram.of_values(values)
    summary = LatencySummary(
        p50=histogram.percentile(0.5) or 0.0, p95=histogram.percentile(0.95) or 0.0,
        p99=histogram.percentile(0.99) or 0.0, max=max(values),
    )  # fmt: skip
    stats = ModelStats(
        model_id="m", version=version, requests=len(values), errors=0, latency_ms=summary,
        latency_hist=LatencyHistogram.model_validate(histogram.wire_fields()),
    )  # fmt: skip
    message = Telemetry(
        device_id=device_id, window_start=end - timedelta(seconds=30), window_end=end,
        models=(stats,), system=SYSTEM,
    )  # fmt: skip
    version_read, decoded = decode_versioned(encode(message, version=wire), Telemetry)
    assert version_read == wire
    return decoded


def three_hours_of_windows(rng: random.Random) -> dict[tuple[str, datetime], list[float]]:
    """Every 30 s for three hours, three devices of different speeds and loads."""
    raw: dict[tuple[str, datetime], list[float]] = {}
    for i in range(3 * 60 * 2):
        end = START + timedelta(seconds=30 * i + 5)
        raw[("fast", end)] = [rng.lognormvariate(-1.0, 0.3) for _ in range(rng.randint(5, 60))]
        raw[("slow", end)] = [rng.lognormvariate(2.0, 0.6) for _ in range(rng.randint(1, 8))]
        if i % 3 == 0:
            raw[("spiky", end)] = [rng.choice((0.5, 0.5, 0.5, 90.0)) for _ in range(20)]
    return raw


def write(sessions: sessionmaker[Session], messages: list[Telemetry]) -> None:
    for start in range(0, len(messages), 500):
        with sessions.begin() as session:
            write_batch(session, messages[start : start + 500], now=NOW)


def points(sessions: sessionmaker[Session], policy: RetentionPolicy, step_s: int, **kwargs):
    with sessions() as session:
        series = query_series(
            session, device_ids=kwargs.pop("device_ids", None), since=START, until=NOW, now=NOW,
            policy=policy, step_s=step_s, **kwargs,
        )  # fmt: skip
    return series


def test_rollups_give_the_percentiles_of_the_merged_raw_windows(sessions):
    raw = three_hours_of_windows(random.Random(14))
    write(sessions, [window(device, end, values) for (device, end), values in raw.items()])

    with sessions() as session:
        stored = session.scalars(select(TelemetryRow).limit(5)).all()
        assert all(row.latency_hist is not None for row in stored)
        assert stored[0].latency_hist.count == stored[0].requests
    before = points(sessions, EVERYTHING, HOUR)
    assert before.resolution == "raw"
    run_pass(sessions, EVERYTHING, NOW)  # rolls up, deletes nothing yet

    with sessions() as session:
        rollups = session.scalars(select(LatencyRollupRow)).all()
    assert {r.resolution_s for r in rollups} == {MINUTE, HOUR}
    for row in rollups:
        start = row.bucket_start.replace(tzinfo=UTC)
        stop = start + timedelta(seconds=row.resolution_s)
        inside = [
            v for (device, end), values in raw.items()
            if device == row.device_id and start <= end < stop
            for v in values
        ]  # fmt: skip
        expected = Histogram.of_values(inside)
        assert row.latency_hist is not None
        assert (row.latency_hist.offset, row.latency_hist.counts) == (
            expected.offset,
            expected.counts,
        ), (row.resolution_s, row.device_id, start)
        assert row.latency_hist.count == row.requests == len(inside)
        assert row.summary_requests == 0
        assert (row.p50_ms, row.p95_ms, row.p99_ms) == (None, None, None)
        for q in (0.5, 0.95, 0.99):
            assert row.latency_hist.percentile(q) == expected.percentile(q)

    # The same hours, read from raw windows, from minute rollups, and from hour rollups.
    for policy, resolution in ((EVERYTHING, "raw"), (MINUTES, "minute"), (HOURS, "hour")):
        series = points(sessions, policy, HOUR)
        assert series.resolution == resolution
        assert series.latency[("m", "1")] == before.latency[("m", "1")], resolution
    fleet = before.latency[("m", "1")]
    assert len(fleet) == 3  # 09:00, 10:00, 11:00
    assert all(point.exact for point in fleet)
    first_hour = [
        v for (_, end), values in raw.items() if end < START + timedelta(hours=1) for v in values
    ]
    whole = Histogram.of_values(first_hour)
    expected_point = (whole.percentile(0.5), whole.percentile(0.95), whole.percentile(0.99))
    assert (fleet[0].p50_ms, fleet[0].p95_ms, fleet[0].p99_ms) == expected_point
    # One device, any step: still the merge of its own windows.
    slow = points(sessions, MINUTES, 600, device_ids=["slow"]).latency[("m", "1")]
    ten = [
        v for (d, end), values in raw.items()
        if d == "slow" and end < START + timedelta(minutes=10)
        for v in values
    ]  # fmt: skip
    assert slow[0].p95_ms == Histogram.of_values(ten).percentile(0.95)


def test_old_agents_summaries_ingest_and_are_marked_approximate(sessions):
    end = START + timedelta(seconds=5)
    v1_values = [3.0] * 40 + [30.0] * 10  # a v1 agent: its p95 is 30 ms
    v2_values = [1.0] * 150  # a v2 agent
    write(
        sessions,
        [window("old", end, v1_values, wire=1), window("new", end, v2_values, wire=2)],
    )
    with sessions() as session:
        rows = {r.device_id: r for r in session.scalars(select(TelemetryRow))}
        last = session.get(DeviceRow, "new").last_telemetry["models"][0]
    # The device row keeps the last window's summary; its histogram is in the window's row.
    assert "latency_hist" not in last
    assert last["latency_ms"]["p95"] == rows["new"].p95_ms
    assert rows["old"].latency_hist is None  # v1 wire: no histogram
    old_p95 = rows["old"].p95_ms
    assert old_p95 == pytest.approx(30.0, rel=0.011)  # its summary, as sent
    assert rows["new"].latency_hist is not None

    old_alone = points(sessions, EVERYTHING, 60, device_ids=["old"]).latency[("m", "1")][0]
    assert not old_alone.exact
    assert old_alone.p95_ms == old_p95
    new_alone = points(sessions, EVERYTHING, 60, device_ids=["new"]).latency[("m", "1")][0]
    assert new_alone.exact
    both = points(sessions, EVERYTHING, 60).latency[("m", "1")][0]
    assert not both.exact
    assert both.requests == 200
    # The histogram's part and the summary's, each weighted by its requests.
    assert both.p95_ms == pytest.approx((150 * new_alone.p95_ms + 50 * old_p95) / 200)

    run_pass(sessions, EVERYTHING, NOW)
    with sessions() as session:
        minute = session.scalars(
            select(LatencyRollupRow).where(
                LatencyRollupRow.resolution_s == MINUTE, LatencyRollupRow.device_id == "old"
            )
        ).one()
    assert minute.latency_hist is None
    assert minute.summary_requests == 50
    assert minute.p95_ms == old_p95
    for policy in (MINUTES, HOURS):
        rolled = points(sessions, policy, HOUR).latency[("m", "1")][0]
        assert not rolled.exact
        assert rolled.p95_ms == pytest.approx(both.p95_ms)
        assert rolled.requests == 200


def test_a_window_with_a_histogram_and_no_summary_gets_its_percentiles_from_it(sessions):
    histogram = Histogram.of_values([2.0] * 99 + [50.0])
    stats = ModelStats(
        model_id="m", version="1", requests=100, errors=0,
        latency_hist=LatencyHistogram.model_validate(histogram.wire_fields()),
    )  # fmt: skip
    message = Telemetry(
        device_id="lean", window_start=START, window_end=START + timedelta(seconds=10),
        models=(stats,), system=SYSTEM,
    )  # fmt: skip
    write(sessions, [message])
    with sessions() as session:
        row = session.scalars(select(TelemetryRow)).one()
    assert row.p95_ms == histogram.percentile(0.95)
    assert row.p99_ms == histogram.percentile(0.99)
    assert row.max_ms == 50.0
