"""Convergence end to end: rollouts whose devices freeze, lose the network, fill their disk,
roll themselves back or never get their download, with a real controller, real agents and a
real mosquitto. Every rollout must end, with the reason a device or wave stopped it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.shared import DeviceState, SignedManifest, WireFormatError, decode
from support.mqtt import MqttProbe, Received, wait_until
from support.tcp_proxy import TcpProxy
from support.tmpfs import small_tmpfs

pytestmark = pytest.mark.slow

ENGINE_TICK_S = 0.2  # CONTROLLER_FAST's engine interval
ENDED = {"completed", "rolled_back", "paused", "aborted"}


def _start_rollout(fleet, version: str, **body: object) -> int:
    payload = {"model": "tiny", "version": version, **body}
    response = fleet.controller.api("POST", "/api/rollouts", json=payload)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _rows(rollout: dict) -> dict[str, dict]:
    return {d["device_id"]: d for d in rollout["devices"]}


def _manifest(item: Received) -> dict | None:
    try:
        return decode(item.payload, SignedManifest).manifest
    except WireFormatError:
        return None


def _manifests(probe: MqttProbe, fleet, device_id: str) -> list[dict]:
    """Every manifest the probe saw on ``device_id``'s desired topic, in order."""
    topic = fleet.topics.desired(device_id)
    found = (_manifest(item) for item in list(probe.received) if item.topic == topic)
    return [m for m in found if m is not None]


def _sent(probe: MqttProbe, fleet, ids: list[str], version: str) -> set[str]:
    """The devices of ``ids`` the probe saw a manifest of ``version`` go to."""
    return {d for d in ids if version in (m["version"] for m in _manifests(probe, fleet, d))}


def _wait_sent(probe: MqttProbe, fleet, ids: list[str], version: str, count: int) -> set[str]:
    """Wait until ``count`` devices of ``ids`` were sent a manifest of ``version``."""
    wait_until(lambda: len(_sent(probe, fleet, ids, version)) >= count, timeout=30, interval=0.01)
    return _sent(probe, fleet, ids, version)


def _wait_downloading(probe: MqttProbe, fleet, device_id: str, version: str) -> None:
    """Wait until the agent's own state says it is downloading its manifest of ``version``."""
    (serial,) = {
        m["serial"] for m in _manifests(probe, fleet, device_id) if m["version"] == version
    }
    topic = fleet.topics.state(device_id)

    def downloading() -> bool:
        states = (decode(i.payload, DeviceState) for i in list(probe.received) if i.topic == topic)
        return any(
            s.progress is not None
            and s.progress.serial == serial
            and s.progress.phase == "downloading"
            for s in states
        )

    wait_until(downloading, timeout=10)


def _get(fleet, rollout_id: int) -> dict:
    return fleet.controller.get(f"/api/rollouts/{rollout_id}")


def _follow(fleet, rollout_id: int, timeout: float) -> tuple[dict, list[dict]]:
    """Poll a rollout until it ends; return its last state and every state seen on the way."""
    seen: list[dict] = []

    def ended() -> bool:
        seen.append(_get(fleet, rollout_id))
        return seen[-1]["status"] in ENDED

    try:
        wait_until(ended, timeout=timeout, interval=0.1)
    except TimeoutError:
        raise AssertionError(
            f"rollout did not end: {seen[-1]}\n{fleet.controller.log()[-3000:]}"
        ) from None
    return seen[-1], seen


def _utc(text: str) -> datetime:
    """An API timestamp (naive ones are UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _device(fleet, device_id: str) -> dict:
    return fleet.controller.get(f"/api/devices/{device_id}")


def _retained_state(fleet, device_id: str) -> DeviceState:
    """The state the agent last published, read from the broker (not from the controller)."""
    with MqttProbe(fleet.broker.host, fleet.broker.port) as probe:
        probe.subscribe(fleet.topics.state(device_id))
        return decode(probe.wait_for(lambda item: True, timeout=10).payload, DeviceState)


def _baseline(fleet, ids: list[str]) -> None:
    """Every device in ``ids`` on tiny:1, so a rollback has a previous version to go back to."""
    rollout = fleet.rollout("1", expect=ENDED, waves="100%", policy={"soak_s": 0})
    assert rollout["status"] == "completed", (rollout["reason"], rollout["devices"])
    assert {d["state"] for d in rollout["devices"]} == {"active"}


def _signal(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, sig)


# --- 1. a canary that freezes mid-install --------------------------------------------------

INSTALL_TIMEOUT_S = 10.0
# mosquitto 2.0 checks keepalives every few seconds: a silent agent's last will comes between
# 1.5 x this and about 5 s later, well inside the install timeout.
KEEPALIVE_S = 1
WAVE_DEADLINE_BREACH = "did not converge within its install deadline"


@pytest.mark.parametrize(
    ("on_breach", "max_failures", "ended"),
    [
        # No failure allowed: the canary's timeout (or the wave's deadline) breaches.
        ("rollback", "0", "rolled_back"),
        # One failure allowed: the wave's own deadline breaches, with nothing converged.
        ("pause", "1", "paused"),
    ],
)
def test_frozen_canary_times_out_and_its_wave_never_passes(
    fleet, on_breach: str, max_failures: str, ended: str
):
    ids = ["fc-1", "fc-2", "fc-3"]
    with MqttProbe(fleet.broker.host, fleet.broker.port) as probe:
        for device_id in ids:
            probe.subscribe(fleet.topics.desired(device_id))
            fleet.start_agent(device_id, runtimes=["onnxruntime"], keepalive_s=KEEPALIVE_S)
        fleet.wait_devices(ids)
        _baseline(fleet, ids)
        rollout_id = _start_rollout(
            fleet, "2", waves="1,100%",
            policy={
                "install_timeout_s": INSTALL_TIMEOUT_S, "soak_s": 1,
                "on_breach": on_breach, "max_failures": max_failures,
            },
        )  # fmt: skip
        (canary,) = _wait_sent(probe, fleet, ids, "2", count=1)
        agent = fleet.agents[canary].proc
        _signal(agent, signal.SIGSTOP)  # frozen mid-install; the broker's last will follows
        frozen_at = time.monotonic()
        try:
            final, seen = _follow(fleet, rollout_id, timeout=INSTALL_TIMEOUT_S + 20)
            elapsed = time.monotonic() - frozen_at
            print(f"freeze->terminal {elapsed:.1f}s ({on_breach})")
            if on_breach == "pause":  # a paused rollout's devices are still derived
                wait_until(
                    lambda: _rows(_get(fleet, rollout_id))[canary]["state"] == "timed_out",
                    timeout=2,
                )
            rows = _rows(_get(fleet, rollout_id))
        finally:
            _signal(agent, signal.SIGCONT)
        others = [d for d in ids if d != canary]
        # The rollout never left its canary wave, and sent the others nothing.
        assert {s["current_wave"] for s in seen} == {0}
        for state in seen:
            assert _rows(state)[canary]["wave"] == 0
            assert {_rows(state)[d]["state"] for d in others} <= {"planned", "cancelled"}, state
        for device_id in others:
            assert [m["version"] for m in _manifests(probe, fleet, device_id)] == ["1"]
    assert final["status"] == ended, (final["reason"], rows)
    assert {rows[d]["state"] for d in others} == (
        {"cancelled"} if on_breach == "rollback" else {"planned"}
    )
    if on_breach == "rollback":
        assert "gate breached in wave 1/2: " in final["reason"], final
        # The canary times out no later than its wave: the failure budget breaches, naming it.
        assert "1 of 1 devices failed (allowed 0): " in final["reason"], final["reason"]
        assert f"{canary} timed_out: timed out after" in final["reason"], final["reason"]
    else:
        assert f"gate breached in wave 1/2: wave 1/2 {WAVE_DEADLINE_BREACH}" in final["reason"]
    # Frozen just after its manifest went out: the rollout ends within the install timeout of
    # the send, plus an engine tick and our polling, and by the wave deadline it showed.
    assert elapsed < INSTALL_TIMEOUT_S + ENGINE_TICK_S + 3, elapsed
    (deadline,) = {s["wave_deadline_at"] for s in seen if s["status"] == "running"}
    assert deadline is not None
    assert _utc(final["updated_at"]) <= _utc(deadline)
    # Timed out (a rollback then sends it its previous version again: it is still away).
    row = rows[canary]
    assert row["state"] == ("reverting" if on_breach == "rollback" else "timed_out"), rows
    assert row["reason"].startswith(f"timed out after {INSTALL_TIMEOUT_S:.0f}s: "), row
    # What it last said: its download progress, or (frozen before it said anything) what it
    # still runs; and since when it is away.
    assert "last reported downloading" in row["reason"] or "running serial 1" in row["reason"]
    assert "offline since " in row["reason"], row


# --- 2. a partition while the devices download ---------------------------------------------


def test_partition_mid_download_times_out_then_the_fleet_converges_late(fleet):
    ids = ["pt-1", "pt-2"]
    broker = fleet.broker
    controller = fleet.controller.proc
    with TcpProxy(broker.host, broker.port) as proxy:
        with MqttProbe(broker.host, broker.port) as probe:
            for device_id in ids:
                probe.subscribe(fleet.topics.desired(device_id))
                probe.subscribe(fleet.topics.state(device_id))
                fleet.start_agent(
                    device_id,
                    broker_url=proxy.url,
                    runtimes=["onnxruntime"],
                    # No telemetry: beside the point here, and a window sent just before the
                    # cut, written after the last will, marks the device online again.
                    telemetry_interval_s=600,
                )
            fleet.wait_devices(ids)
            _baseline(fleet, ids)
            rollout_id = _start_rollout(
                fleet, "2", waves="100%",
                policy={"install_timeout_s": 8, "soak_s": 0, "on_breach": "pause"},
            )  # fmt: skip
            _wait_sent(probe, fleet, ids, "2", count=len(ids))
            # Nothing is served once the devices start downloading, until the network is down.
            _signal(controller, signal.SIGSTOP)
            try:
                for device_id in ids:
                    _wait_downloading(probe, fleet, device_id, "2")
                proxy.cut()
            finally:
                _signal(controller, signal.SIGCONT)
        final, seen = _follow(fleet, rollout_id, timeout=30)
        assert "completed" not in {s["status"] for s in seen}
        assert final["status"] == "paused", (final["reason"], final["devices"])
        assert "gate breached in wave 1/1: " in final["reason"], final["reason"]

        def timed_out() -> bool:  # a paused rollout's devices are still derived
            return {d["state"] for d in _get(fleet, rollout_id)["devices"]} == {"timed_out"}

        wait_until(timed_out, timeout=2)
        for row in _get(fleet, rollout_id)["devices"]:
            assert row["reason"].startswith("timed out after 8s: "), row
            assert "last reported downloading 0%" in row["reason"], row
            assert "offline since " in row["reason"], row
        for device_id in ids:  # cut mid-download: what the controller last heard
            device = _device(fleet, device_id)
            assert not device["online"], device
            assert device["active"]["version"] == "1", device
            assert device["progress"]["phase"] == "downloading", device
        assert proxy.refused > 0  # the agents kept trying to come back meanwhile
        proxy.restore()
        fleet.wait_devices(ids, timeout=30)

        def converged() -> bool:  # the desired state stayed: they finish the download
            return {d["state"] for d in _get(fleet, rollout_id)["devices"]} == {"active"}

        wait_until(converged, timeout=30, interval=0.2)
        rows = _rows(_get(fleet, rollout_id))
        for device_id in ids:
            assert rows[device_id]["reason"].startswith("converged after its deadline"), rows
            state = _retained_state(fleet, device_id)
            active = _device(fleet, device_id)["active"]
            assert state.active is not None
            assert active["version"] == state.active.version == "2", (active, state)
            assert active["serial"] == state.active.serial == rows[device_id]["serial"]
            assert active["sha256"] == state.active.sha256
        assert _get(fleet, rollout_id)["status"] == "paused"  # waits for its operator


# --- 3. the disk fills up during the download ----------------------------------------------


@pytest.fixture
def small_disk(fleet) -> Iterator[Path]:
    """A 4 MiB tmpfs as one agent's data dir (``agent-disk-1`` under the fleet's root)."""
    with small_tmpfs(fleet.root / "agent-disk-1", "4m") as mountpoint:
        try:
            yield mountpoint
        finally:
            agent = fleet.agents.get("disk-1")
            if agent is not None:
                try:  # nothing may hold the mount when it goes
                    agent.terminate()
                except subprocess.TimeoutExpired:
                    agent.kill()


def test_disk_full_mid_download_is_retried_until_space_returns(fleet, small_disk: Path):
    agent = fleet.start_agent(
        "disk-1", runtimes=["onnxruntime"], io_retry_min_s=0.2, io_retry_max_s=0.5
    )
    pid = agent.proc.pid
    fleet.wait_devices(["disk-1"])
    # Leave less free than the agent's reserve (1 MiB): the download cannot start.
    ballast = small_disk / "ballast"
    free = shutil.disk_usage(small_disk).free
    with ballast.open("wb") as f:
        f.write(b"\0" * (free - 256 * 1024))
    rollout_id = _start_rollout(
        fleet, "1", waves="100%", policy={"install_timeout_s": 120, "soak_s": 0}
    )

    def retrying() -> bool:
        progress = _device(fleet, "disk-1")["progress"] or {}
        return progress.get("phase") == "retrying"

    wait_until(retrying, timeout=30, interval=0.2)
    progress = _device(fleet, "disk-1")["progress"]
    assert "No space left on device" in progress["last_error"], progress
    assert progress["attempts"] >= 1
    rollout = _get(fleet, rollout_id)
    assert rollout["status"] == "running", rollout
    (row,) = rollout["devices"]
    assert row["state"] == "sent", row  # a full disk is the device's problem, not a failure
    ballast.unlink()
    final = fleet.wait_rollout(rollout_id, ENDED, timeout=60)
    assert final["status"] == "completed", (final["reason"], final["devices"])
    assert [d["state"] for d in final["devices"]] == ["active"]
    device = _device(fleet, "disk-1")
    assert device["active"]["version"] == "1"
    assert device["last_outcome"]["result"] == "swapped"
    assert agent.alive  # retried in place, never restarted
    assert agent.proc.pid == pid


# --- 4. a device rolls itself back under the rollout's health policy -------------------------


def test_device_rolls_itself_back_under_the_rollouts_health_policy(fleet):
    busy, quiet = "sr-busy", "sr-quiet"
    for device_id in (busy, quiet):
        fleet.start_agent(device_id, runtimes=["onnxruntime"])
    fleet.wait_devices([busy, quiet])
    _baseline(fleet, [busy, quiet])
    fleet.start_traffic([busy])
    # The device's own baseline: requests served by tiny:1 since it loaded.
    wait_until(
        lambda: (
            sum(p["requests"] for p in fleet.controller.get(f"/api/telemetry?device_id={busy}"))
            >= 20
        ),
        timeout=30,
    )
    rollout = fleet.rollout(
        "3",
        expect=ENDED,
        waves="100%",
        policy={
            "max_failures": "1",
            "max_p95_regression": 1000,  # the fleet gate stays out of it: the device decides
            "soak_s": 12,
            "health_window_s": 3,
            "health_min_requests": 5,
            "health_max_p95_regression": 0.5,
            # tiny:3 is about 1.2 ms slower here: under the 1 ms default floor, by a hair
            "health_min_p95_regression_ms": 0.2,
        },
        timeout=90,
    )
    rows = _rows(rollout)
    assert rows[busy]["state"] == "rolled_back", rows
    reason = rows[busy]["reason"]
    assert reason.startswith("device rolled back from serial "), reason
    prefix, _, own = reason.partition(": ")
    from_serial, to_serial = (int(n) for n in prefix.split("serial ")[1].split(" to "))
    assert (from_serial, to_serial) == (rows[busy]["serial"], 1), reason
    assert "p95 latency" in own, reason
    assert "regressed more than 50%" in own, reason
    device = _device(fleet, busy)
    assert device["active"]["version"] == "1", device["active"]
    outcome = device["last_outcome"]
    assert outcome["result"] == "rolled_back", outcome
    assert (outcome["from_serial"], outcome["to_serial"]) == (from_serial, to_serial)
    # The failure budget counted it, and allowed it.
    assert rollout["status"] == "completed", (rollout["reason"], rows)
    assert "1 rolled_back" in rollout["reason"], rollout["reason"]
    assert rows[quiet]["state"] == "active", rows
    assert _device(fleet, quiet)["active"]["version"] == "3"


# --- 5. a download that never completes ----------------------------------------------------


def test_download_that_never_completes_fails_with_the_agents_reason(fleet):
    fetch_timeout_s = 3.0
    fleet.start_agent("df-1", runtimes=["onnxruntime"], fetch_timeout_s=fetch_timeout_s)
    fleet.wait_devices(["df-1"])
    controller = fleet.controller.proc
    with MqttProbe(fleet.broker.host, fleet.broker.port) as probe:
        probe.subscribe(fleet.topics.desired("df-1"))
        probe.subscribe(fleet.topics.state("df-1"))
        # Paused, the row keeps its outcome (a rollback would go on to mark it reverted).
        rollout_id = _start_rollout(
            fleet, "1", waves="100%", policy={"soak_s": 0, "on_breach": "pause"}
        )
        _wait_sent(probe, fleet, ["df-1"], "1", count=1)
        _signal(controller, signal.SIGSTOP)  # neither MQTT chunks nor HTTP are served
        stopped_at = time.monotonic()

        def gave_up(item: Received) -> bool:
            if item.topic != fleet.topics.state("df-1"):
                return False
            outcome = decode(item.payload, DeviceState).last_outcome
            return outcome is not None and outcome.result == "download_failed"

        try:
            probe.wait_for(gave_up, timeout=fetch_timeout_s + 10)
            waited = time.monotonic() - stopped_at
        finally:
            _signal(controller, signal.SIGCONT)
    assert waited >= fetch_timeout_s - 0.5, waited  # it waited out its fetch timeout
    final = fleet.wait_rollout(rollout_id, ENDED, timeout=30)
    (row,) = final["devices"]
    assert row["state"] == "failed", row
    assert row["reason"].startswith("download_failed: gave up after 3.0s"), row
    assert final["status"] == "paused", final
    assert "gate breached in wave 1/1: 1 of 1 devices failed (allowed 0)" in final["reason"]
