"""Two agents on one host with the same local API port (both left at the default, say): the
second exits at once with a configuration error that names the setting, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

from edgefleet.shared import Topics
from support.agent_harness import agent_env, make_key, settings_dict, write_toml


def test_a_local_api_port_in_use_is_a_clear_configuration_error(tmp_path, mosquitto) -> None:
    _, key = make_key(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        values = settings_dict(
            device_id="pi-second", broker_url=mosquitto.url,
            topics=Topics(f"port-{uuid.uuid4().hex[:8]}/v1"), key_path=key,
            data_dir=tmp_path / "data", http_bind=f"127.0.0.1:{port}",
        )  # fmt: skip
        config = write_toml(tmp_path / "agent.toml", values)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(config)],
            capture_output=True, text=True, env=agent_env(), timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert f"http_bind 127.0.0.1:{port} is in use" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
