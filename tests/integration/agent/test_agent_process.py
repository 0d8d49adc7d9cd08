"""The agent as a daemon process: CLI errors, serving, SIGTERM, kill -9 (last will and resumed
downloads), and a corrupted active slot on restart."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.settings import AgentSettings
from edgefleet.shared import EventType
from support import agent_models
from support.agent_harness import (
    DEVICE,
    AgentProcess,
    agent_env,
    settings_dict,
    write_toml,
    x_batch,
)
from support.mosquitto import free_port
from support.mqtt import wait_until

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or agent_env(),
    )


def test_help_documents_every_option():
    result = cli("run", "--help")
    assert result.returncode == 0
    for name in AgentSettings.model_fields:
        assert name in result.stdout
    assert "EDGEFLEET_AGENT_" in result.stdout


def test_missing_config_file_is_one_line_exit_2(tmp_path):
    result = cli("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "config file not found" in result.stderr


def test_unknown_key_is_one_line_exit_2(tmp_path, signing, topics):
    values = settings_dict(
        device_id=DEVICE,
        broker_url="mqtt://127.0.0.1:1",
        topics=topics,
        key_path=signing[1],
        data_dir=tmp_path / "d",
        colour="blue",
    )
    result = cli("run", "--config", str(write_toml(tmp_path / "a.toml", values)))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"edgefleet-agent: invalid config {tmp_path / 'a.toml'}: colour: unknown key"
    )


def test_missing_key_file_is_exit_2(tmp_path, topics):
    values = settings_dict(
        device_id=DEVICE,
        broker_url="mqtt://127.0.0.1:1",
        topics=topics,
        key_path=tmp_path / "missing.pem",
        data_dir=tmp_path / "d",
    )
    result = cli("run", "--config", str(write_toml(tmp_path / "a.toml", values)))
    assert result.returncode == 2
    assert "controller_key: file not found" in result.stderr


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, False), (0o600, False)])
def test_a_config_with_the_password_that_others_can_read_is_warned_about(
    tmp_path, signing, topics, mode, warned
):
    values = settings_dict(
        device_id=DEVICE, broker_url="mqtts://127.0.0.1:1", topics=topics, key_path=signing[1],
        data_dir=tmp_path / "d", username=DEVICE, password="s3cret",
    )  # fmt: skip
    config = write_toml(tmp_path / "agent.toml", values)
    config.chmod(mode)
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    warning = f"holds the broker password and other users can read it (mode {mode:04o})"
    assert (warning in result.stderr) is warned, result.stderr


def test_env_vars_override_the_file(tmp_path, signing, topics):
    values = settings_dict(
        device_id=DEVICE,
        broker_url="mqtt://127.0.0.1:1",
        topics=topics,
        key_path=signing[1],
        data_dir=tmp_path / "d",
    )
    env = {
        **agent_env(),
        "EDGEFLEET_AGENT_DEVICE_ID": "from-env",
        "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "oops",
    }
    result = cli("check-config", "--config", str(write_toml(tmp_path / "a.toml", values)), env=env)
    assert result.returncode == 2
    assert "telemetry_interval_s" in result.stderr
    env["EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S"] = "3"
    result = cli("check-config", "--config", str(tmp_path / "a.toml"), env=env)
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["device_id"] == "from-env"
    assert shown["telemetry_interval_s"] == 3.0


@pytest.fixture
def daemon(tmp_path, mosquitto, topics, signing):
    """Factory for agent processes sharing one data dir and HTTP port; all killed at the end."""
    port = free_port()
    processes: list[AgentProcess] = []
    values = settings_dict(
        device_id=DEVICE,
        broker_url=mosquitto.url,
        topics=topics,
        key_path=signing[1],
        data_dir=tmp_path / "agent-data",
        http_bind=f"127.0.0.1:{port}",
    )
    config = write_toml(tmp_path / "agent.toml", values)

    def start() -> AgentProcess:
        process = AgentProcess(config, tmp_path / "agent.log").start()
        processes.append(process)
        return process

    start.port = port  # type: ignore[attr-defined]
    start.data_dir = tmp_path / "agent-data"  # type: ignore[attr-defined]
    yield start
    for process in processes:
        process.kill()


def infer_http(port: int, x: np.ndarray) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/infer",
            body=json.dumps({"inputs": {"x": x.tolist()}}),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def test_daemon_serves_then_stops_cleanly_or_leaves_a_will(daemon, models, publisher, watcher):
    process = daemon()
    watcher.wait_state(lambda s: s.status == "idle")
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, version="a"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    x = x_batch(2, seed=5)["x"]
    result = infer_http(daemon.port, x)
    np.testing.assert_allclose(
        result["outputs"]["logits"], models.onnx_a.reference({"x": x})["logits"], rtol=1e-5
    )
    assert process.terminate() == 0
    watcher.wait_state(lambda s: s.status == "offline" and s.detail == "agent stopped")

    process = daemon()  # boots from its active slot, no download
    booted = watcher.wait_event(EventType.BOOTED, where=lambda e: e.serial == 1)
    assert booted.reason.startswith("serving demo a")
    watcher.wait_state(lambda s: s.status == "serving")
    process.kill()  # no goodbye: the broker publishes the last will
    watcher.wait_state(lambda s: s.status == "offline" and s.detail is None)


def bitmap_present(data_dir: Path, sha: str) -> set[int]:
    path = data_dir / "downloads" / f"{sha}.bitmap"
    try:
        bits = bytes.fromhex(json.loads(path.read_text())["bits"])
    except (OSError, ValueError, KeyError):
        return set()
    return {i for i in range(len(bits) * 8) if bits[i >> 3] & (1 << (i & 7))}


@pytest.mark.parametrize("schema", [1, 2])
def test_kill_9_mid_download_resumes_with_only_missing_chunks(
    daemon, publisher, watcher, tmp_path, schema
):
    """Schema 2: the golden file and both chunk indexes come first; after the restart the small
    indexes are fetched again, the artifact only for the chunks its bitmap lacks."""
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=4, hidden=256)
    manifest = publisher.manifest(
        big, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=256, schema=schema
    )
    sha, count = manifest.artifact.sha256, manifest.artifact.chunk_count
    assert count > 20
    before = 0  # frames of the files fetched before the artifact's own chunks
    if schema == 2:
        golden, index = manifest.golden_ref, manifest.artifact.chunk_index
        assert golden is not None
        assert golden.chunk_index is not None
        assert index is not None
        before = golden.chunk_index.chunk_count + golden.chunk_count + index.chunk_count
    publisher.chunk_limit = before + 10
    process = daemon()
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    wait_until(lambda: len(bitmap_present(daemon.data_dir, sha)) == 10, timeout=20)
    process.kill()
    have = bitmap_present(daemon.data_dir, sha)
    publisher.requests.clear()
    publisher.chunk_limit = None

    daemon()
    started = watcher.wait_event(
        EventType.DOWNLOAD_STARTED,
        where=lambda e: e.figures["resumed_chunks"] > 0 and e.figures["chunks"] == count,
    )
    assert started.figures["resumed_chunks"] == 10
    watcher.wait_event(EventType.SWAPPED)
    again = publisher.requested_indices(sha)
    # only the chunks missing from the on-disk bitmap were asked for again (a chunk may be
    # asked for twice if the machine is slow enough to hit chunk_timeout_s, never one we had)
    assert set(again) == set(range(count)) - have
    if schema == 2:  # the index was fetched again (it is dropped once read), whole
        assert set(publisher.requested_indices(index.sha256)) == set(range(index.chunk_count))
    done = watcher.wait_event(EventType.DOWNLOAD_DONE, where=lambda e: e.figures["chunks"] == count)
    assert done.figures["resumed_chunks"] == 10


def test_corrupted_active_slot_falls_back_to_previous(daemon, models, publisher, watcher):
    process = daemon()
    for serial, model, version in ((1, models.onnx_a, "a"), (2, models.onnx_b, "b")):
        manifest = publisher.manifest(
            model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN, version=version
        )
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        watcher.wait_event(EventType.SWAPPED, where=lambda e, s=serial: e.serial == s)
    assert process.terminate() == 0
    artifact = daemon.data_dir / "artifacts" / manifest.artifact.sha256
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    daemon()
    fallback = watcher.wait_event(EventType.SLOT_FALLBACK)
    assert fallback.version == "b"
    assert "sha256" in fallback.reason
    booted = watcher.wait_event(EventType.BOOTED, where=lambda e: e.reason.startswith("fell back"))
    assert booted.version == "a"
    state = watcher.wait_state(
        lambda s: s.status == "serving" and s.active is not None and s.active.version == "a"
    )
    assert state.previous is None
    x = x_batch(1, seed=8)["x"]
    result = infer_http(daemon.port, x)
    assert result["version"] == "a"
    np.testing.assert_allclose(
        result["outputs"]["logits"], models.onnx_a.reference({"x": x})["logits"], rtol=1e-5
    )
