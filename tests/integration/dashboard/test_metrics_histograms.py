"""``GET /metrics`` of a real controller fed through a real mosquitto: latency is a histogram
per model version and device group whose classic buckets are exactly the cumulative counts of
the ingested windows' merged histograms, counters that only grow between scrapes, wire v1
windows counted apart, and no quantile gauge."""

from __future__ import annotations

import itertools
import math

import httpx
import pytest
from dash_sim import topics_of
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edgefleet.controller.telemetry_totals import LE_EDGES_MS
from edgefleet.shared.histogram import Histogram
from support.fleet import ControllerProcess
from support.latency_windows import LatencyFleet
from support.mqtt import wait_until

LATENCY = "edgefleet_model_latency_seconds"
Key = tuple[str, str, str]


def scrape(controller: ControllerProcess) -> dict[str, list[Sample]]:
    reply = httpx.get(f"{controller.url}/metrics", timeout=10)
    assert reply.status_code == 200, reply.text
    families = {}
    for family in text_string_to_metric_families(reply.text):
        families[family.name] = family
    assert families[LATENCY].type == "histogram"
    assert families["edgefleet_model_requests"].type == "counter"
    assert families["edgefleet_model_summary_only_windows"].type == "counter"
    return {name: family.samples for name, family in families.items()}


def by_series(samples: list[Sample], name: str) -> dict[Key, float]:
    return {
        (s.labels["model_id"], s.labels["version"], s.labels["group"]): s.value
        for s in samples
        if s.name == name
    }


def buckets_of(samples: list[Sample]) -> dict[Key, list[tuple[float, float]]]:
    """Each histogram series' (le, count) pairs, in the order exposed."""
    found: dict[Key, list[tuple[float, float]]] = {}
    for s in samples:
        if s.name == f"{LATENCY}_bucket":
            key = (s.labels["model_id"], s.labels["version"], s.labels["group"])
            found.setdefault(key, []).append((float(s.labels["le"]), s.value))
    return found


def check_histograms(scraped: dict[str, list[Sample]], fleet: LatencyFleet) -> None:
    latency = scraped[LATENCY]
    counts = by_series(latency, f"{LATENCY}_count")
    sums = by_series(latency, f"{LATENCY}_sum")
    buckets = buckets_of(latency)
    assert set(buckets) == set(counts) == set(fleet.histogram_ms)
    edges = [edge / 1000.0 for edge in LE_EDGES_MS] + [math.inf]
    for key, values in fleet.histogram_ms.items():
        les = [le for le, _ in buckets[key]]
        assert les == edges, key  # seconds; the powers of two of the exponential layout
        cumulative = [n for _, n in buckets[key]]
        assert all(a <= b for a, b in itertools.pairwise(cumulative)), key
        assert cumulative[-1] == counts[key] == len(values), key
        assert cumulative[:-1] == Histogram.of_values(values).cumulative(LE_EDGES_MS), key
        assert cumulative[:-1] == [sum(v <= e for v in values) for e in LE_EDGES_MS], key
        assert math.isclose(sums[key], sum(values) / 1000.0, rel_tol=1e-9), key


@pytest.mark.parametrize("ingest_workers", [0, 2], ids=["in-process", "two-workers"])
def test_latency_is_an_exact_histogram_per_version_and_group_with_monotonic_counters(
    start_controller, probe, ingest_workers: int
) -> None:
    """Also through two ingest worker processes: their totals merged into one exposition."""
    controller = start_controller(EDGEFLEET_INGEST_WORKERS=str(ingest_workers))
    topics = topics_of(controller)
    fleet = LatencyFleet(probe, topics, seed=14)
    fleet.hello("pi-a1", "plant-a")
    fleet.hello("pi-a2", "plant-a")
    fleet.hello("pi-b1", "plant-b")
    fleet.hello("pi-x", None)  # no group label: group "none"
    fleet.hello("old-a", "plant-a", wire=1)  # a v1 agent: summaries only
    wait_until(lambda: len(controller.get("/api/devices")) == 5, timeout=20, interval=0.1)

    def send_round(round_: int) -> None:
        for i in range(3):
            fleet.send("pi-a1", 40 + i, errors=i)
            fleet.send("pi-a1", 15, version="2", median_ms=6.0)
            fleet.send("pi-a2", 25 + 10 * round_)
            fleet.send("pi-b1", 30, median_ms=1.5)
            fleet.send("pi-x", 5, median_ms=200.0)
            fleet.send("old-a", 60)

    def ingested() -> bool:
        requests = by_series(
            scrape(controller)["edgefleet_model_requests"], "edgefleet_model_requests_total"
        )
        return requests == fleet.requests

    send_round(0)
    wait_until(ingested, timeout=30, interval=0.2)
    first = scrape(controller)
    check_histograms(first, fleet)
    plant_a = ("tiny", "1", "plant-a")
    requests = by_series(first["edgefleet_model_requests"], "edgefleet_model_requests_total")
    assert requests[plant_a] == 3 * 40 + 3 + 3 * 25 + 3 * 60  # the v1 agent's requests too
    assert by_series(first[LATENCY], f"{LATENCY}_count")[plant_a] == 3 * 40 + 3 + 3 * 25
    errors = by_series(first["edgefleet_model_errors"], "edgefleet_model_errors_total")
    assert errors == fleet.errors
    assert errors[plant_a] == 3
    summary_only = by_series(
        first["edgefleet_model_summary_only_windows"], "edgefleet_model_summary_only_windows_total"
    )
    assert summary_only[plant_a] == 3 == fleet.summary_only[plant_a]
    assert set(fleet.summary_only) == {plant_a}
    assert all(summary_only[key] == 0 for key in set(summary_only) - {plant_a})
    # Prometheus conventions: no quantile gauge of windows anywhere in the exposition.
    assert "edgefleet_device_latency_seconds" not in first
    assert not [s for samples in first.values() for s in samples if "quantile" in s.labels]
    assert first["edgefleet_model_series"][0].value == len(fleet.requests) == 4
    assert first["edgefleet_model_series_dropped_windows"][0].value == 0

    send_round(1)
    wait_until(ingested, timeout=30, interval=0.2)
    second = scrape(controller)
    check_histograms(second, fleet)
    before, after = buckets_of(first[LATENCY]), buckets_of(second[LATENCY])
    for key, pairs in before.items():  # counters: every bucket of every series only grew
        assert all(n0 <= n1 for (_, n0), (_, n1) in zip(pairs, after[key], strict=True)), key
    grown = ("tiny", "1", "plant-a")
    assert after[grown][-1][1] == before[grown][-1][1] + 3 * 40 + 3 + 3 * 35
