"""Latency histograms end to end through a real controller: v2 windows over real MQTT, the series
API's percentiles from their merge, v1 windows beside them marked approximate in the API and on
the dashboard's charts, and the raw windows' histograms in ``/api/telemetry``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from dash_sim import SimDevice, topics_of

from edgefleet.shared import encode
from edgefleet.shared.histogram import Histogram
from support.mqtt import wait_until
from support.samples import device_telemetry


def test_series_merge_device_histograms_and_mark_v1_summaries(start_controller, probe):
    controller = start_controller()
    topics = topics_of(controller)
    now = datetime.now(UTC).replace(microsecond=0)
    end = now - timedelta(seconds=90)
    # cam-0 is busy and slow in its tail, cam-1 idle and fast: both v2, histograms sent.
    busy = device_telemetry("cam-0", 8.0, requests=400, end=end, histogram=True)
    idle = device_telemetry("cam-1", 1.0, requests=20, end=end, histogram=True)
    old = device_telemetry("old-0", 5.0, requests=50, end=end)  # a v1 agent: no histogram
    for device_id in ("cam-0", "cam-1", "old-0"):
        SimDevice(probe, topics, device_id).hello()
    probe.publish(topics.telemetry("cam-0"), encode(busy), qos=1)
    probe.publish(topics.telemetry("cam-1"), encode(idle), qos=1)
    probe.publish(topics.telemetry("old-0"), encode(old, version=1), qos=1)

    def windows() -> list[dict]:
        return controller.get("/api/telemetry?model_id=tiny")

    wait_until(lambda: len(windows()) == 3, timeout=20, interval=0.2)
    stored = {w["device_id"]: w for w in windows()}
    assert stored["old-0"]["latency_hist"] is None
    sent = busy.models[0].latency_hist
    assert sent is not None
    assert stored["cam-0"]["latency_hist"]["counts"] == list(sent.counts)
    assert stored["cam-0"]["latency_hist"]["count"] == 400

    zulu = "%Y-%m-%dT%H:%M:%SZ"
    span = f"since={(end - timedelta(minutes=1)).strftime(zulu)}&until={now.strftime(zulu)}"
    merged = Histogram.of(sent)
    merged.merge(idle.models[0].latency_hist)
    v2 = controller.get(f"/api/series/group?selector=site=lab&{span}&max_points=10")
    (line,) = v2["latency"]
    # The hello's labels put all three in site=lab: only two carry histograms.
    assert line["requests"] == [470]
    assert line["exact"] == [False]
    cams = [
        controller.get(f"/api/series/devices/{d}?{span}&max_points=10")["latency"][0]
        for d in ("cam-0", "cam-1")
    ]
    assert [c["exact"] for c in cams] == [[True], [True]]
    assert cams[0]["p95_ms"] == [Histogram.of(sent).percentile(0.95)]
    # The fleet's p95 of the two v2 devices together: their merged histogram, not a mean.
    assert merged.percentile(0.95) == pytest.approx(8.0, rel=0.011)
    fleet = controller.get(f"/api/series/group?selector=*&{span}&max_points=10")["latency"][0]
    old_p95 = old.models[0].latency_ms.p95
    expected = (420 * merged.percentile(0.95) + 50 * old_p95) / 470
    assert fleet["p95_ms"][0] == pytest.approx(expected)

    page = httpx.get(f"{controller.url}/dashboard/devices/old-0?minutes=15", timeout=10).text
    assert 'class="point approx"' in page
    assert "are approximate: v1 agents send percentiles" in page
    page = httpx.get(f"{controller.url}/dashboard/devices/cam-0?minutes=15", timeout=10).text
    assert 'class="point approx"' not in page
    assert "percentiles of its merged latency histograms" in page
    fleet_page = httpx.get(f"{controller.url}/dashboard", timeout=10).text
    assert "their latency histograms merged" in fleet_page
