"""Real agents serving real inference report histograms that a real controller exposes on
``/metrics`` exactly: each (version, group) series' buckets are the cumulative counts of the
merged histograms of every telemetry window the agents published, as a subscriber on the same
broker saw them."""

from __future__ import annotations

import itertools
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.controller.telemetry_totals import LE_EDGES_MS
from edgefleet.shared import DeviceChannel, Telemetry, decode
from edgefleet.shared.histogram import Histogram
from support.mqtt import MqttProbe, wait_until

pytestmark = pytest.mark.slow

GROUPS = {"pi-a": "plant-a", "pi-b": "plant-b"}
LATENCY = "edgefleet_model_latency_seconds"


def published(probe: MqttProbe) -> dict[tuple[str, str, str], Histogram]:
    """Every window's histogram the agents published, merged per (model, version, group)."""
    merged: dict[tuple[str, str, str], Histogram] = {}
    for item in list(probe.received):
        window = decode(item.payload, Telemetry)
        for stats in window.models:
            assert stats.latency_hist is not None or stats.requests == 0, stats
            if stats.latency_hist is not None:
                key = (stats.model_id, stats.version, GROUPS[window.device_id])
                merged.setdefault(key, Histogram()).merge(stats.latency_hist)
    return merged


def exposed(text: str) -> dict[tuple[str, str, str], dict[str, list[tuple[str, float]]]]:
    series: dict[tuple[str, str, str], dict[str, list[tuple[str, float]]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != LATENCY:
            continue
        assert family.type == "histogram"
        for s in family.samples:
            key = (s.labels["model_id"], s.labels["version"], s.labels["group"])
            series.setdefault(key, {}).setdefault(s.name, []).append(
                (s.labels.get("le", ""), s.value)
            )
    return series


def test_real_agents_latency_histograms_are_exposed_exactly(fleet) -> None:
    with MqttProbe(fleet.broker.host, fleet.broker.port) as probe:
        probe.subscribe(fleet.topics.all_devices(DeviceChannel.TELEMETRY))
        for device_id, group in GROUPS.items():
            fleet.start_agent(device_id, runtimes=["onnxruntime"], labels={"group": group})
        fleet.wait_devices(list(GROUPS))
        rollout = fleet.rollout("1", expect={"completed"}, waves="100%", policy={"soak_s": 0})
        assert rollout["status"] == "completed", rollout
        fleet.start_traffic(list(GROUPS), rate_hz=60)

        def served() -> bool:
            merged = published(probe)
            return len(merged) == 2 and all(h.count >= 60 for h in merged.values())

        wait_until(served, timeout=60, interval=0.5)
        fleet._traffic_stop.set()  # the fixture's traffic, stopped so the totals settle
        for thread in fleet._traffic:
            thread.join(15)
        last: list[object] = []

        def settled() -> bool:  # the controller has every window the agents sent, and no more
            merged = published(probe)
            series = exposed(fleet.controller.api("GET", "/metrics").text)
            counts = {k: s[f"{LATENCY}_count"][0][1] for k, s in series.items()}
            last[:] = [counts, {k: h.count for k, h in merged.items()}]
            return counts == {k: h.count for k, h in merged.items()}

        try:
            wait_until(settled, timeout=30, interval=0.5)
        except TimeoutError:
            raise AssertionError(f"exposed vs published counts: {last}") from None
        merged = published(probe)
        series = exposed(fleet.controller.api("GET", "/metrics").text)

    assert set(series) == {("tiny", "1", "plant-a"), ("tiny", "1", "plant-b")}
    for key, histogram in merged.items():
        buckets = series[key][f"{LATENCY}_bucket"]
        assert [float(le) for le, _ in buckets] == [e / 1000.0 for e in LE_EDGES_MS] + [math.inf]
        counts = [n for _, n in buckets]
        assert all(a <= b for a, b in itertools.pairwise(counts)), key
        assert counts[:-1] == histogram.cumulative(LE_EDGES_MS), key
        assert counts[-1] == histogram.count == series[key][f"{LATENCY}_count"][0][1]
        assert math.isclose(series[key][f"{LATENCY}_sum"][0][1], histogram.sum / 1000.0,
                            rel_tol=1e-9)  # fmt: skip
        assert counts[-1] > counts[0]  # real latencies: above the first edge (7.8 us)
