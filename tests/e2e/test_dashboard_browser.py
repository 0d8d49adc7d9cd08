"""The dashboard in real headless Chromium (Playwright) while a rollout runs against real agents:
the fleet page follows the rollout without a reload, the device page plots latency with swaps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.mqtt import wait_until
from support.tools import require_tool

pytestmark = pytest.mark.slow

SHOTS_FOR_LEAD = Path("/tmp/edgefleet-screenshots")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def test_fleet_page_follows_a_rollout_live_and_device_chart_has_points(fleet, tmp_path):
    chromium = require_tool("chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    ids = ["web-1", "web-2", "web-3"]
    for device_id in ids:
        fleet.start_agent(device_id)
    fleet.wait_devices(ids)
    fleet.rollout("1", expect={"completed"}, waves="100%", policy={"soak_s": 0})
    fleet.start_traffic(ids, rate_hz=15)
    wait_until(lambda: len(fleet.controller.get("/api/telemetry?model_id=tiny")) >= 6, timeout=60)
    url = fleet.controller.url
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{url}/dashboard")
            page.wait_for_selector("table.devices >> text=web-3")
            page.evaluate("window.__sameDocument = 'never reloaded'")
            response = fleet.controller.api(
                "POST", "/api/rollouts",
                json={"model": "tiny", "version": "2", "waves": "1,100%",
                      "policy": {"soak_s": 3, "max_p95_regression": 10.0, "min_requests": 5}},
            )  # fmt: skip
            assert response.status_code == 201, response.text
            rollout = f'[data-rollout="{response.json()["id"]}"]'
            page.wait_for_selector(rollout, timeout=30_000)  # appeared without navigation
            seen: list[str] = []
            shot_mid = shots / "fleet-rollout-in-progress.png"

            def progressed() -> bool:
                text = page.inner_text(f"{rollout} .progress span")
                if not seen or seen[-1] != text:
                    seen.append(text)
                    if not shot_mid.exists() and not text.startswith("3/3"):
                        page.screenshot(path=str(shot_mid), full_page=True)
                status = page.get_attribute(rollout, "data-status")
                return status == "completed" and text.startswith("3/3")

            wait_until(progressed, timeout=150, interval=0.25)
            assert len(seen) >= 2, seen  # the page showed the progress change by itself
            assert page.evaluate("window.__sameDocument") == "never reloaded"
            assert int(page.evaluate("document.body.dataset.refreshes")) >= 2
            page.screenshot(path=str(shots / "fleet-rollout-completed.png"), full_page=True)

            page.click('table.devices a[href="/dashboard/devices/web-2"]')
            page.wait_for_selector('svg[data-chart="latency"]')
            page.wait_for_function(
                """() => {
                    const chart = document.querySelector('svg[data-chart="latency"]');
                    return chart.querySelectorAll('.marker.swapped').length > 0
                        && chart.querySelectorAll('circle.point').length > 0;
                }""",
                timeout=30_000,
            )
            points = page.locator('svg[data-chart="latency"] circle.point').count()
            assert points > 0
            versions = page.inner_text('svg[data-chart="latency"] + figcaption')
            assert "tiny:2 p95" in versions
            assert page.locator('svg[data-chart="cpu"] circle.point').count() > 0
            device_shot = shots / "device-latency.png"
            page.screenshot(path=str(device_shot), full_page=True)

            page.goto(f"{url}/dashboard/rollouts/{response.json()['id']}")
            assert page.locator("table.devices tbody tr").count() == 3
            assert "gates passed" in page.inner_text("main")
            page.screenshot(path=str(shots / "rollout.png"), full_page=True)
            page.goto(f"{url}/dashboard/models/tiny")
            tiny2 = page.locator("section.version", has=page.locator("h2", has_text="tiny:2"))
            assert "runs on 3 online device(s)" in tiny2.inner_text()
            page.screenshot(path=str(shots / "model.png"), full_page=True)
        finally:
            browser.close()

    SHOTS_FOR_LEAD.mkdir(parents=True, exist_ok=True)
    shutil.copy(shots / "fleet-rollout-in-progress.png" if shot_mid.exists() else
                shots / "fleet-rollout-completed.png", SHOTS_FOR_LEAD / "fleet.png")  # fmt: skip
    shutil.copy(device_shot, SHOTS_FOR_LEAD / "device.png")
    for extra in ("rollout.png", "model.png"):  # more for the curious, beyond the two asked for
        shutil.copy(shots / extra, SHOTS_FOR_LEAD / extra)
