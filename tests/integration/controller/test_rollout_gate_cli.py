"""``edgefleet rollout start``'s latency gate options against a real controller: the absolute p95
floor and the requests needed on each side reach the API's policy, and values it cannot use are
refused with their name."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from support.fleet import ControllerProcess
from support.mosquitto import MosquittoBroker

TOKEN = f"gate-cli-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def controller(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoBroker
) -> Iterator[ControllerProcess]:
    process = ControllerProcess(
        tmp_path_factory.mktemp("gate-cli"), broker_url=mosquitto.url,
        topic_root=f"edgefleet-gate-cli/{uuid.uuid4().hex[:8]}/v1",
        extra_env={"EDGEFLEET_API_TOKEN": TOKEN},
    )  # fmt: skip
    process.start()
    yield process
    process.stop()


def start(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "rollout", "start", "tiny:1",
         "--url", url, *options],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "EDGEFLEET_API_TOKEN": TOKEN, "COLUMNS": "200"},
    )  # fmt: skip


def test_a_floor_that_is_not_a_latency_is_refused_before_calling_the_api():
    result = start("http://127.0.0.1:9", "--min-p95-regression", "fast")
    assert result.returncode == 2
    assert "'fast' is not a latency like 1ms, 500us or 0.5s" in result.stderr


def test_the_floor_and_the_requests_needed_reach_the_api(controller):
    too_high = start(controller.url, "--min-p95-regression", "20000s")  # 2e7 ms
    assert too_high.returncode == 1
    assert "min_p95_regression_ms" in too_high.stderr
    too_many = start(controller.url, "--min-requests", "2000000000")
    assert too_many.returncode == 1
    assert "min_requests" in too_many.stderr
    # Within bounds, the policy is accepted and the request gets as far as the model: none here.
    fine = start(controller.url, "--min-p95-regression", "500us", "--min-requests", "50")
    assert fine.returncode == 1
    assert "tiny:1" in fine.stderr
    assert "min_p95_regression_ms" not in fine.stderr
