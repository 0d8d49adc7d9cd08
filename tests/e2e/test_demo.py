"""``edgefleet demo --exit``: the README's first command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_scenario_and_cleans_up(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["COLUMNS"] = "160"
    data = tmp_path / "demo"
    command = [sys.executable, "-m", "edgefleet.controller.cli", "demo", "--exit"]
    result = subprocess.run(
        [*command, "--data-dir", str(data)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "rollout 1: completed" in out
    assert "rollout 2: rolled_back" in out
    assert "gate breached in wave 1/2" in out  # waves count from 1 everywhere
    assert "every device runs digits:1 again" in out
    assert "dashboard and API: http://127.0.0.1:" in out
    # Every process the demo started is gone.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(data)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == []
