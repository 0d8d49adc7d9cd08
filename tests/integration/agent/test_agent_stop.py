"""``edgefleet-agent run`` stops within 5 s of SIGTERM or SIGINT whatever it is doing: idle,
downloading (the broker stops serving chunks half-way), or installing (timing a candidate over
many runs); it publishes its offline state on the way out and leaves no process behind, and a
broker that goes away meanwhile does not hold it up."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgefleet.shared import DeviceStatus, ProgressPhase
from support import agent_models
from support.agent_harness import DEVICE, AgentProcess, settings_dict, write_toml, x_batch
from support.mqtt import wait_until

pytestmark = pytest.mark.slow
STOP_WITHIN_S = 5.0
GOLDEN = [x_batch(1, seed=i) for i in range(2)]


@pytest.fixture
def agent(tmp_path, mosquitto, topics, signing) -> Iterator[AgentProcess]:
    values = settings_dict(
        device_id=DEVICE,
        broker_url=mosquitto.url,
        topics=topics,
        key_path=signing[1],
        data_dir=tmp_path / "agent-data",
        validation_timed_runs=2_000_000,  # installing takes minutes unless a stop cuts it short
    )
    process = AgentProcess(write_toml(tmp_path / "agent.toml", values), tmp_path / "agent.log")
    yield process.start()
    process.kill()


def _stop(agent: AgentProcess, signum: signal.Signals) -> float:
    assert agent.proc is not None
    children = psutil.Process(agent.proc.pid).children(recursive=True)
    started = time.monotonic()
    agent.proc.send_signal(signum)
    agent.proc.wait(30)
    took = time.monotonic() - started
    assert agent.proc.returncode == 0, agent.log_path.read_text()[-3000:]
    assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    return took


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("state", ["idle", "downloading", "installing"])
def test_agent_stops_within_5s_in_every_state_publishing_offline(
    agent, publisher, watcher, tmp_path: Path, state: str, signum: signal.Signals
):
    watcher.wait_state(lambda s: s.status == DeviceStatus.IDLE)
    if state != "idle":
        model = agent_models.linear_classifier(tmp_path / "m.onnx", seed=4, hidden=256)
        manifest = publisher.manifest(
            model, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=256
        )
        if state == "downloading":
            publisher.chunk_limit = 12  # the indexes and a few chunks, then nothing more
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        phase = ProgressPhase.DOWNLOADING if state == "downloading" else ProgressPhase.INSTALLING
        watcher.wait_state(lambda s: s.progress is not None and s.progress.phase == phase)
        if state == "downloading":
            wait_until(lambda: publisher.frames_sent >= 12, timeout=20)
        time.sleep(0.5)  # well inside the phase
    took = _stop(agent, signum)
    print(f"agent {state} {signum.name}: stopped in {took:.2f} s")  # the figure, with -s
    assert took < STOP_WITHIN_S, f"{state}: stopped in {took:.2f} s"
    watcher.wait_state(lambda s: s.status == DeviceStatus.OFFLINE and s.detail == "agent stopped")
    log = agent.log_path.read_text()
    assert f"agent {DEVICE} stopped" in log


def test_a_broker_that_goes_away_as_the_agent_stops_does_not_hold_the_stop(
    tmp_path, own_broker, topics, signing
):
    """The host shutting down: the broker stops answering while the agent says goodbye, then
    its connection drops. The agent waits for the acknowledgement of its offline state only
    while it is connected (before, it waited the full 5 s)."""
    values = settings_dict(
        device_id=DEVICE, broker_url=own_broker.url, topics=topics, key_path=signing[1],
        data_dir=tmp_path / "agent-data",
    )  # fmt: skip
    agent = AgentProcess(write_toml(tmp_path / "agent.toml", values), tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: "running; local API" in agent.log_path.read_text(), timeout=30)
        time.sleep(0.5)  # connected
        broker_pid = own_broker.pid
        assert broker_pid is not None
        os.kill(broker_pid, signal.SIGSTOP)  # no acknowledgement will come
        assert agent.proc is not None
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        own_broker.kill()  # the connection drops
        agent.proc.wait(30)
        took = time.monotonic() - started
    finally:
        agent.kill()
    print(f"agent, broker gone while stopping: stopped in {took:.2f} s")
    assert agent.proc.returncode == 0
    assert took < 2.0, agent.log_path.read_text()[-2000:]
    assert "final state was not delivered before shutdown" in agent.log_path.read_text()
