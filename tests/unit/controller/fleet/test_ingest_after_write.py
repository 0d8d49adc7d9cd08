"""Ingest feeds what it stored, and only that, to its after-write callbacks (the /metrics
telemetry totals) on a real database; a failing callback never stops ingest; after a restart the
totals read the groups of devices they have not heard a hello from out of the fleet table."""

from __future__ import annotations

import logging
import random

import pytest
from ingest_harness import refuse_devices, run_ingest

from edgefleet.controller.fleet.ingest import FleetIngest
from edgefleet.controller.telemetry_totals import (
    LE_EDGES_MS,
    NO_GROUP,
    SeriesKey,
    TelemetryTotals,
    labels_in_database,
)
from edgefleet.shared import Telemetry, Topics, WireModel, encode
from edgefleet.shared.histogram import Histogram
from support.latency_windows import latencies, model_stats, window
from support.samples import device_hello

TOPICS = Topics("edgefleet-test/after-write/v1")


def new_ingest(database) -> FleetIngest:
    _, sessions = database
    return FleetIngest(sessions, TOPICS, on_fetch=lambda request: None, flush_s=0.01)


def test_only_stored_messages_reach_the_totals_and_a_failing_callback_stops_nothing(
    database, caplog: pytest.LogCaptureFixture
) -> None:
    engine, sessions = database
    refuse_devices(engine, "poison")
    ingest = new_ingest(database)
    totals = TelemetryTotals(labels_in_database(sessions))
    seen: list[list[WireModel]] = []

    def broken(messages: list[WireModel]) -> None:
        raise RuntimeError("observer bug")

    ingest.after_write.extend([broken, totals.add_written, seen.append])
    rng = random.Random(3)
    sent: dict[str, list[float]] = {"a": [], "b": []}
    messages: list[tuple[str, WireModel]] = []
    for i, device in enumerate(["pi-0", "pi-1", "poison", "pi-2"]):
        group = "a" if i % 2 == 0 else "b"
        messages.append((TOPICS.hello(device), device_hello(device, labels={"group": group})))
        for _ in range(3):
            values = latencies(rng, 20)
            messages.append((TOPICS.telemetry(device), window(device, model_stats(values))))
            if device != "poison":
                sent[group].extend(values)

    async def scenario() -> None:
        for topic, message in messages:
            ingest.submit(topic, encode(message))
        await ingest.drained(timeout=20)

    with caplog.at_level(logging.ERROR, logger="edgefleet.controller.fleet.ingest"):
        run_ingest(ingest, scenario)

    stored = [m for batch in seen for m in batch]
    assert {getattr(m, "device_id", "") for m in stored} == {"pi-0", "pi-1", "pi-2"}
    assert len(stored) == len(messages) - 4  # the poison's hello and three windows
    assert ingest.counters.dead_lettered == {("hello", "IntegrityError"): 1,
                                             ("telemetry", "IntegrityError"): 3}  # fmt: skip
    assert "observer bug" in caplog.text
    series = {s.key: s for s in totals.snapshot().series}
    assert set(series) == {SeriesKey("tiny", "1", "a"), SeriesKey("tiny", "1", "b")}
    for group, values in sent.items():
        s = series[SeriesKey("tiny", "1", group)]
        assert s.totals.requests == s.totals.histogram.count == len(values)
        assert s.buckets == tuple(Histogram.of_values(values).cumulative(LE_EDGES_MS))

    # A restarted controller has seen no hello yet: the groups come from the fleet table.
    restarted = TelemetryTotals(labels_in_database(sessions))
    windows = [window(d, model_stats([1.0, 2.0])) for d in ("pi-0", "pi-1", "never-said-hello")]
    restarted.add_written(windows)
    requests = {s.key.group: s.totals.requests for s in restarted.snapshot().series}
    assert requests == {"a": 2, "b": 2, NO_GROUP: 2}
    assert all(isinstance(m, Telemetry) for m in windows)
