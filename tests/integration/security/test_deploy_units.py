"""The systemd units pass ``systemd-analyze verify`` with no warning at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.tools import require_tool

UNITS = Path(__file__).resolve().parents[3] / "deploy" / "systemd"
BIN = Path(sys.executable).parent
# Where the units expect the virtualenvs on a real host -> this test's virtualenv, because
# verify insists that ExecStart's program exists.
EXECUTABLES = {
    "/opt/edgefleet-agent/bin/edgefleet-agent": BIN / "edgefleet-agent",
    "/opt/edgefleet/bin/edgefleet": BIN / "edgefleet",
}


@pytest.mark.parametrize("unit", ["edgefleet-agent.service", "edgefleet-controller.service"])
def test_unit_verifies_cleanly(unit, tmp_path):
    require_tool("systemd-analyze", "apt-get install systemd")
    text = (UNITS / unit).read_text()
    for installed, here in EXECUTABLES.items():
        if installed in text:
            assert here.exists(), here
            text = text.replace(installed, str(here))
    (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", ["edgefleet-agent.service", "edgefleet-controller.service"])
def test_unit_is_confined(unit):
    keys = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    assert keys["Restart"] == ["on-failure"]
    assert keys["User"][0] not in {"root", "0"}
    for setting, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert keys[setting] == [value], setting
    assert len(keys["ReadWritePaths"]) == 1
    assert keys["ReadWritePaths"][0].startswith("/var/lib/edgefleet")
    assert "MemoryMax" in keys
    assert "RestartSec" in keys
    assert "StartLimitBurst" in keys
