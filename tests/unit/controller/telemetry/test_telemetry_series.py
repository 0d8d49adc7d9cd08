"""Series queries stitch hour rollups, minute rollups and raw windows without gaps or overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from telemetry_rows import add_window

from edgefleet.controller.fleet.tables import EventRow
from edgefleet.controller.telemetry.history import RetentionPolicy, run_pass
from edgefleet.controller.telemetry.series import auto_since, query_series

NOW = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@pytest.fixture
def history(sessions):
    with sessions.begin() as session:
        for i in range(3 * 60 * 2):
            at = START + timedelta(seconds=30 * i)
            version = "1" if i < 200 else "2"
            add_window(session, "a", at, p95=float(i % 7), requests=10, version=version)
            add_window(session, "b", at, p95=1.0, requests=1, version=version)
        session.add(
            EventRow(
                event_id="e1",
                device_id="a",
                type="swapped",
                at=START + timedelta(seconds=6000),
                version="2",
                serial=2,
                figures={},
                received_at=NOW,
            )
        )
    return sessions


@pytest.mark.parametrize(
    ("policy", "resolution"),
    [
        (RetentionPolicy(), "raw"),
        (RetentionPolicy(raw_s=1800), "minute"),
        (RetentionPolicy(raw_s=1800, minute_s=3600), "hour"),
    ],
)
def test_every_request_is_counted_once_whatever_the_resolution(history, policy, resolution):
    run_pass(history, policy, NOW)
    with history() as session:
        series = query_series(
            session, device_ids=["a"], since=START, until=NOW, now=NOW, policy=policy
        )
    assert series.resolution == resolution
    assert sum(p.requests for pts in series.latency.values() for p in pts) == 360 * 10
    assert set(series.latency) == {("m", "1"), ("m", "2")}
    assert series.step_s >= {"raw": 1, "minute": 60, "hour": 3600}[resolution]
    times = [p.t_ms for p in series.latency[("m", "1")]]
    assert times == sorted(times)
    assert len(times) <= 300
    assert sum(p.cpu_percent > 0 for p in series.system) == len(series.system) > 0
    assert [(m.type, m.version) for m in series.markers] == [("swapped", "2")]


def test_group_of_v1_devices_weights_their_percentiles_by_requests_and_says_so(history):
    with history() as session:
        series = query_series(
            session, device_ids=None, since=NOW - timedelta(minutes=10), until=NOW, now=NOW,
            policy=RetentionPolicy(), step_s=60,
        )  # fmt: skip
    point = series.latency[("m", "2")][-1]
    assert point.requests == 2 * 10 + 2 * 1  # two windows of each device in the last minute
    assert point.p95_ms == pytest.approx((1.0 * 10 + 2.0 * 10 + 1.0 + 1.0) / 22)
    assert not point.exact
    assert series.step_s == 60


def test_auto_since_starts_at_the_first_window_but_shows_at_least_two_minutes(history):
    with history() as session:
        day_ago = NOW - timedelta(days=1)
        assert auto_since(session, ["a"], day_ago, NOW) == START - timedelta(seconds=5)
        assert auto_since(session, ["zz"], day_ago, NOW) == NOW - timedelta(minutes=2)
        recent = NOW - timedelta(seconds=30)
        assert auto_since(session, ["a"], recent, NOW) == recent  # never before ``since``
