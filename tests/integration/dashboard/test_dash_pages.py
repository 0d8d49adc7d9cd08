"""Dashboard pages and series endpoints of a real controller fed by real MQTT messages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from dash_sim import SimDevice, topics_of

from edgefleet.shared import EventType
from support.mqtt import wait_until


def _points(svg_name: str, html: str) -> int:
    match = re.search(rf'data-chart="{svg_name}" data-points="(\d+)"', html)
    assert match, f"no {svg_name} chart in the page"
    return int(match.group(1))


def test_pages_show_devices_latency_and_swaps(start_controller, probe):
    controller = start_controller()
    topics = topics_of(controller)
    now = datetime.now(UTC)
    devices = [SimDevice(probe, topics, f"cam-{i}") for i in range(2)]
    for device in devices:
        device.hello()
        device.state(version="2", serial=2)
    swap = devices[0].event(EventType.SWAPPED, version="2", at=now - timedelta(minutes=3))
    for minute in range(6, 0, -1):
        version = "1" if minute > 3 else "2"
        for device in devices:
            device.telemetry(3.0 + minute, version=version, end=now - timedelta(minutes=minute),
                             qos=1)  # fmt: skip

    def stored() -> bool:
        response = controller.api("GET", "/api/series/devices/cam-0?minutes=15")
        if response.status_code == 404:
            return False  # its hello is not written yet
        series = response.json()
        return sum(len(s["t"]) for s in series["latency"]) >= 6 and bool(series["markers"])

    wait_until(stored, timeout=20, interval=0.2)
    series = controller.get("/api/series/devices/cam-0?minutes=15")
    assert {(s["model_id"], s["version"]) for s in series["latency"]} == {
        ("tiny", "1"),
        ("tiny", "2"),
    }
    assert series["resolution"] == "raw"
    v1 = next(s for s in series["latency"] if s["version"] == "1")
    assert v1["p95_ms"] == [9.0, 8.0, 7.0]  # oldest first, one point per window
    assert series["markers"][0]["type"] == "swapped"
    assert series["markers"][0]["t"] == int(swap.at.timestamp() * 1000)
    assert series["system"]["temperature_c"][0] == 48.5

    group = controller.get("/api/series/group?selector=site=lab&minutes=15")
    assert group["devices"] == 2
    assert sum(sum(s["requests"]) for s in group["latency"]) == 6 * 2 * 50

    fleet = httpx.get(f"{controller.url}/dashboard", timeout=10)
    assert fleet.status_code == 200
    assert "cam-0" in fleet.text
    assert "cam-1" in fleet.text
    assert "tiny:2" in fleet.text
    assert '<script src="/dashboard/static/dashboard.js"' in fleet.text
    fragment = httpx.get(f"{controller.url}/dashboard?fragment=1", timeout=10).text
    assert "<html" not in fragment
    assert "cam-0" in fragment

    page = httpx.get(f"{controller.url}/dashboard/devices/cam-0?minutes=15", timeout=10).text
    assert _points("latency", page) == 6 * 3  # p50, p95 and p99 of six windows
    assert _points("cpu", page) == 6
    assert 'class="marker swapped"' in page
    assert "ms</text>" in page
    assert "time (UTC)" in page

    for asset, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        response = httpx.get(f"{controller.url}/dashboard/static/{asset}", timeout=10)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
    assert httpx.get(f"{controller.url}/dashboard/devices/nope", timeout=10).status_code == 404
    assert httpx.get(f"{controller.url}/dashboard/models", timeout=10).status_code == 200
    assert httpx.get(f"{controller.url}/dashboard/rollouts", timeout=10).status_code == 200
    assert httpx.get(f"{controller.url}/dashboard/models/nope", timeout=10).status_code == 404


def test_device_page_escapes_what_devices_send(start_controller, probe):
    controller = start_controller()
    device = SimDevice(probe, topics_of(controller), "evil")
    device.hello(labels={"site": "<script>alert(1)</script>"})
    wait_until(lambda: any(d["id"] == "evil" for d in controller.get("/api/devices")), timeout=15)
    page = httpx.get(f"{controller.url}/dashboard/devices/evil", timeout=10).text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
