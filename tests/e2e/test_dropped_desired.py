"""A device that drops its desired state unread (here: larger than it accepts) says so by the
payload's digest, and the controller fails that device's target at once with the reason,
shown in the API and on the rollout page, instead of waiting out the install deadline."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow

ENDED = {"completed", "paused", "rolled_back"}


def test_a_desired_state_the_device_drops_fails_its_target_with_the_reason(fleet):
    fleet.start_agent("tiny-inbox", max_desired_bytes=1024)  # a manifest is a few KB
    fleet.wait_devices(["tiny-inbox"])
    started = time.monotonic()
    rollout = fleet.rollout(
        "1", expect=ENDED, waves="100%", policy={"soak_s": 0, "install_timeout_s": 600}
    )
    took = time.monotonic() - started
    (row,) = rollout["devices"]
    assert row["state"] == "failed", row
    assert row["reason"].startswith("the device dropped its desired state unread:")
    assert "PayloadTooLargeError" in row["reason"]
    assert took < 60  # at once, not at the 10-minute install deadline
    device = fleet.controller.get("/api/devices/tiny-inbox")
    assert device["active"] is None
    page = fleet.controller.api("GET", f"/dashboard/rollouts/{rollout['id']}")
    assert page.status_code == 200
    assert "dropped its desired state unread" in page.text
