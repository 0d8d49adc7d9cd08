"""What the agent measures always fits the wire: a bogus reading never stops a report."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from edgefleet.agent import measured
from edgefleet.shared import Event, EventType, LatencySummary, SystemStats


@pytest.mark.parametrize(
    ("reading", "expected"),
    [(-300.0, None), (1e6, None), (math.nan, None), (math.inf, None), (None, None), (48.5, 48.5)],
)
def test_a_bogus_temperature_is_unknown_not_a_failed_sample(reading, expected):
    value = measured.celsius(reading)
    assert value == expected
    SystemStats(
        cpu_percent=measured.percent(250.0),
        process_cpu_percent=measured.process_percent(math.nan),
        rss_bytes=1,
        mem_used_bytes=1,
        mem_total_bytes=1,
        temperature_c=value,
        disk_free_bytes=1,
    )


def test_latencies_from_a_stuck_clock_are_clamped_into_the_wire_range():
    huge = measured.latency_ms(1e12)
    LatencySummary(p50=huge, p95=huge, p99=huge, max=measured.latency_ms(math.inf))
    assert measured.latency_ms(-1.0) == 0.0


def test_event_figures_drop_non_finite_values_and_keep_the_rest():
    figures = measured.figures(
        {"max_abs_error": math.nan, "p95_ms": 3.5, "x" * 100: 1.0, "big": 1e300, "inf": math.inf}
    )
    assert "max_abs_error" not in figures
    assert "inf" not in figures
    assert figures["p95_ms"] == 3.5
    assert "x" * 64 in figures
    Event(device_id="pi", type=EventType.VALIDATION_FAILED, at=datetime.now(UTC), figures=figures)
    many = measured.figures({f"f{i}": float(i) for i in range(100)})
    assert len(many) == 64
