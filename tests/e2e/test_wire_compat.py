"""An agent of the previous release (wire v1) in a fleet run by the current controller (v2).

The old agent is that release's own code, extracted from git history and run as a child process
(``support.old_agent``), next to a current agent on the same broker: the controller must learn
each device's wire version from its hello and write manifests and commands in it, and read what
a v1 agent reports (no ``last_outcome``: events and slots stand in for it).
"""

from __future__ import annotations

import json

import pytest

from edgefleet.shared import DeviceState, SignedCommand, SignedManifest, decode_versioned
from support.agent_harness import write_toml
from support.mosquitto import free_port
from support.mqtt import MqttProbe, Received, wait_until
from support.old_agent import (
    OldAgentProcess,
    OldRelease,
    materialise_old_release,
    old_settings_dict,
    probe_old_code,
)

pytestmark = pytest.mark.slow

NEW, OLD = "new-1", "old-1"
ENDED = {"completed", "paused", "rolled_back", "aborted"}


@pytest.fixture(scope="session")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> OldRelease:
    """The previous release, extracted once per session; errors (never skips) without git."""
    path = materialise_old_release(tmp_path_factory.mktemp("old-release"))
    code = probe_old_code(path)
    # A child run as the old agent is imports the old code, not the new editable install.
    assert code.schema_version == 1, code
    assert code.supported == (1,), code
    assert code.shared_file.is_relative_to(path), code
    assert code.agent_file.is_relative_to(path), code
    return OldRelease(path, code)


def start_old_agent(fleet, release: OldRelease, device_id: str, **overrides) -> OldAgentProcess:
    fleet.http[device_id] = f"127.0.0.1:{free_port()}"
    values = old_settings_dict(
        release.code.settings,
        device_id=device_id,
        broker_url=fleet.broker_url,
        topics=fleet.topics,
        key_path=fleet.controller_dir / "keys" / "signing.pub",
        data_dir=fleet.root / f"agent-{device_id}",
        http_bind=fleet.http[device_id],
        **overrides,
    )
    config = write_toml(fleet.root / f"{device_id}.toml", values)
    agent = OldAgentProcess(release.path, config, fleet.root / f"{device_id}.log").start()
    fleet.agents[device_id] = agent  # stopped with the fleet
    return agent


def _warnings(agent: OldAgentProcess) -> list[str]:
    """The distinct warnings in an agent's log (timestamps and threads cut off)."""
    found: dict[str, None] = {}
    for line in agent.log().splitlines():
        if " WARNING " in line or " ERROR " in line:
            found[line.split(" ", 4)[-1][:300]] = None
    return list(found)[:20]


def _explain(rollout: dict, agent: OldAgentProcess) -> str:
    rows = "; ".join(f"{d['device_id']} {d['state']}: {d['reason']}" for d in rollout["devices"])
    warnings = "\n  ".join(_warnings(agent))
    return f"rollout {rollout['status']}: {rollout['reason']}\n{rows}\nold agent:\n  {warnings}"


def _version(item: Received) -> int:
    return int(json.loads(item.payload)["v"])


def _on(probe: MqttProbe, topic: str) -> list[Received]:
    return [item for item in list(probe.received) if item.topic == topic and item.payload]


def _state(probe: MqttProbe, topic: str) -> tuple[int, DeviceState] | None:
    """The latest state on ``topic``, decoded by the current decoder (which reads v1 too)."""
    items = _on(probe, topic)
    return decode_versioned(items[-1].payload, DeviceState) if items else None


def _wait_state(
    probe: MqttProbe, topic: str, active: str, timeout: float = 20
) -> tuple[int, DeviceState]:
    """Wait for the device's state to show version ``active`` in its active slot."""
    found: list[tuple[int, DeviceState]] = []

    def runs_it() -> bool:
        latest = _state(probe, topic)
        found[:] = [latest] if latest else []
        return (
            latest is not None
            and latest[1].active is not None
            and (latest[1].active.version == active)
        )

    try:
        wait_until(runs_it, timeout=timeout, interval=0.1)
    except TimeoutError:
        raise AssertionError(f"{topic} never showed version {active} active: {found}") from None
    return found[0]


def _active_version(fleet, device_id: str) -> str | None:
    device = {d["id"]: d for d in fleet.controller.get("/api/devices")}[device_id]
    return (device["active"] or {}).get("version")


def _rows(rollout: dict) -> dict[str, dict]:
    return {d["device_id"]: d for d in rollout["devices"]}


def test_old_agent_is_rolled_out_to_and_commanded_in_v1(fleet, old_release):
    topics = fleet.topics
    with MqttProbe(fleet.broker.host, fleet.broker.port) as probe:
        for device_id in (NEW, OLD):
            for topic in (
                topics.hello(device_id),
                topics.state(device_id),
                topics.desired(device_id),
                topics.commands(device_id),
            ):
                probe.subscribe(topic)
        fleet.start_agent(NEW)
        # Over HTTP: the MQTT chunk path of a v1 agent has a test of its own (below), so a
        # frame it cannot read fails that test alone and this one still judges manifests,
        # state and commands.
        old = start_old_agent(fleet, old_release, OLD, fetch_prefer="http")
        fleet.wait_devices([NEW, OLD])

        # The running old agent speaks v1: its hello says so, and the controller recorded it.
        assert {_version(i) for i in _on(probe, topics.hello(OLD))} == {1}, old.log()[-2000:]
        assert {_version(i) for i in _on(probe, topics.hello(NEW))} == {2}
        devices = {d["id"]: d for d in fleet.controller.get("/api/devices")}
        assert devices[OLD]["wire_version"] == 1
        assert devices[NEW]["wire_version"] == 2

        rollouts = {}
        for version in ("1", "2"):
            rollout = fleet.rollout(version, expect=ENDED, waves="100%", policy={"soak_s": 0})
            assert rollout["status"] == "completed", _explain(rollout, old)
            assert {d: r["state"] for d, r in _rows(rollout).items()} == {
                NEW: "active",
                OLD: "active",
            }
            rollouts[version] = rollout
            for device_id in (NEW, OLD):
                assert _active_version(fleet, device_id) == version
            # The old agent's own retained state says the same, in v1 and without an outcome.
            wire, state = _wait_state(probe, topics.state(OLD), version)
            assert wire == 1
            assert state.last_outcome is None
            assert state.seq is None

        # Manifests go to each device in the version it speaks, and the old one verified them.
        for device_id, wire in ((OLD, 1), (NEW, 2)):
            desired = _on(probe, topics.desired(device_id))
            assert {_version(i) for i in desired} == {wire}, device_id
            serials = {
                decode_versioned(i.payload, SignedManifest)[1].manifest["serial"] for i in desired
            }
            assert len(serials) >= 2, (device_id, serials)

        # An operator's rollback command reaches the old agent: written in v1, it obeys.
        response = fleet.controller.api(
            "POST", f"/api/devices/{OLD}/rollback", json={"reason": "compat test"}
        )
        assert response.status_code == 202, response.text
        wait_until(lambda: _active_version(fleet, OLD) == "1", timeout=30)
        commands = _on(probe, topics.commands(OLD))
        assert [_version(i) for i in commands] == [1]
        assert _wait_state(probe, topics.state(OLD), "1")[0] == 1
        assert _active_version(fleet, NEW) == "2"  # the command was for one device only

        # A v1 agent reports no outcome: the controller infers its rollback from the slots.
        second = rollouts["2"]["id"]

        def old_row_rolled_back() -> bool:
            row = _rows(fleet.controller.get(f"/api/rollouts/{second}"))[OLD]
            return row["state"] == "rolled_back"

        wait_until(old_row_rolled_back, timeout=30, interval=0.3)
        rows = _rows(fleet.controller.get(f"/api/rollouts/{second}"))
        assert "rolled back" in rows[OLD]["reason"], rows[OLD]
        assert rows[NEW]["state"] == "active"

        # The new agent gets the command signed, in v2, with a serial: and obeys it.
        response = fleet.controller.api(
            "POST", f"/api/devices/{NEW}/rollback", json={"reason": "signed"}
        )
        assert response.status_code == 202, response.text
        wait_until(lambda: _active_version(fleet, NEW) == "1", timeout=30)
        signed = _on(probe, topics.commands(NEW))
        assert [(_version(i), json.loads(i.payload)["kind"]) for i in signed] == [
            (2, "signed_command")
        ]
        body = decode_versioned(signed[0].payload, SignedCommand)[1].command
        assert body["serial"] > max(
            decode_versioned(i.payload, SignedManifest)[1].manifest["serial"]
            for i in _on(probe, topics.desired(NEW))
        )
    assert old.alive, old.log()[-3000:]


def test_old_and_new_agent_fetch_one_artifact_over_mqtt_chunks(fleet, old_release):
    # One chunk topic per artifact serves every device fetching it, so the controller cannot
    # write frames per peer: a frame must be one a v1 agent reads. MQTT first is every v1
    # agent's default; it tries HTTP only once the MQTT download failed, after fetch_timeout_s.
    fleet.start_agent(NEW)
    old = start_old_agent(fleet, old_release, OLD, fetch_prefer="mqtt", fetch_timeout_s=15.0)
    fleet.wait_devices([NEW, OLD])
    rollout = fleet.rollout("1", expect=ENDED, waves="100%", policy={"soak_s": 0})
    assert rollout["status"] == "completed", _explain(rollout, old)
    assert {d: r["state"] for d, r in _rows(rollout).items()} == {NEW: "active", OLD: "active"}
    assert _active_version(fleet, OLD) == "1"
    dropped = [w for w in _warnings(old) if "chunk" in w or "download failed" in w]
    assert not dropped, dropped  # the chunks arrived over MQTT, not through a fallback


def test_old_agents_refusal_fails_its_row_with_the_reason_of_its_v1_event(fleet, old_release):
    # A real refusal that needs no timing: the old agent's max_artifact_bytes is below the
    # artifact's size. The controller cannot know that limit (it is not in the hello), so it
    # issues the manifest, and the old agent refuses it with a v1 manifest_refused event before
    # downloading. A stalled controller (SIGSTOP) or a dead download would also do, but depend
    # on keepalive and socket timeouts on a loaded machine; a runtime-only agent is a skip.
    old = start_old_agent(fleet, old_release, OLD, max_artifact_bytes=64)
    fleet.wait_devices([OLD])
    # on_breach=pause: the row keeps its failed state (a rollback would mark it reverted).
    policy = {"soak_s": 0, "on_breach": "pause"}
    rollout = fleet.rollout("1", expect=ENDED, waves="100%", policy=policy)
    assert rollout["status"] == "paused", rollout
    assert "1 of 1 devices failed" in rollout["reason"], rollout
    row = _rows(rollout)[OLD]
    assert row["state"] == "failed", row
    # The writer turned the v1 event into an outcome: its type and the agent's own words.
    assert row["reason"].startswith("refused: manifest_refused:"), row
    assert "exceeds the limit of 64" in row["reason"], row
    events = fleet.controller.get(f"/api/devices/{OLD}/events")
    assert any(e["type"] == "manifest_refused" and e["serial"] for e in events), events
    assert _active_version(fleet, OLD) is None
    assert old.alive, old.log()[-3000:]
