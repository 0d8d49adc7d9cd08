"""Post-swap health watch rolls back automatically; the controller can command a rollback."""

from __future__ import annotations

import numpy as np

from edgefleet.agent.errors import InferenceError
from edgefleet.shared import EventType, HealthPolicy
from support import agent_models
from support.agent_harness import DEVICE, x_batch
from support.mqtt import wait_until

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def serve(agent, publisher, watcher, model, serial, **kwargs):
    manifest = publisher.manifest(
        model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN, version=f"v{serial}", **kwargs
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == serial)
    return manifest


def test_error_rate_regression_rolls_back(models, publisher, watcher, start_agent, retained):
    agent = start_agent()
    serve(agent, publisher, watcher, models.onnx_a, 1)
    for i in range(30):  # the baseline: version 1 answers batches of 2 without error
        agent.infer(x_batch(2, seed=i))
    policy = HealthPolicy(window_s=60, min_requests=10, max_error_rate=0.2)
    fragile = serve(agent, publisher, watcher, models.fragile, 2, health=policy)
    assert agent.current_model.info.serial == 2
    errors = 0

    def traffic() -> bool:
        nonlocal errors
        try:
            agent.infer(x_batch(2))  # the fragile version only handles batch 1
        except InferenceError:
            errors += 1
        return agent.current_model.info.serial == 1

    wait_until(traffic, timeout=20, interval=0.005)
    event = watcher.wait_event(EventType.ROLLED_BACK)
    assert event.serial == 2  # the serial it left
    assert (event.figures["from_serial"], event.figures["to_serial"]) == (2.0, 1.0)
    assert "error rate" in event.reason
    assert event.figures["error_rate"] == 1.0
    assert event.figures["requests"] >= 10
    assert event.figures["previous_error_rate"] == 0.0
    assert errors >= 10
    inputs = x_batch(2, seed=3)
    np.testing.assert_allclose(
        agent.infer(inputs)["logits"], models.onnx_a.reference(inputs)["logits"], rtol=1e-5
    )
    state = watcher.wait_state(lambda s: "rolled back" in (s.detail or ""))
    assert state.active is not None
    assert state.active.serial == 1
    assert state.previous is None
    assert state.last_serial == 2  # the bad manifest is not re-applied from the retained topic
    outcome = retained(lambda s: s.last_outcome is not None and s.active.serial == 1).last_outcome
    assert outcome.result == "rolled_back"
    assert (outcome.serial, outcome.from_serial, outcome.to_serial) == (2, 2, 1)
    assert outcome.sha256 == fragile.artifact.sha256
    assert "error rate" in outcome.reason
    assert "error_rate=1" in outcome.reason


def test_rollback_command_is_idempotent(models, publisher, watcher, start_agent, retained):
    agent = start_agent()
    serve(agent, publisher, watcher, models.onnx_a, 1)
    left = serve(agent, publisher, watcher, models.onnx_b, 2)
    command = publisher.command_rollback(DEVICE, reason="operator")
    event = watcher.wait_event(EventType.ROLLED_BACK)
    assert "commanded by the controller: operator" in event.reason
    assert (event.serial, event.figures) == (2, {"from_serial": 2.0, "to_serial": 1.0})
    state = retained(lambda s: s.active is not None and s.active.serial == 1)
    outcome = state.last_outcome
    assert (outcome.result, outcome.serial, outcome.from_serial, outcome.to_serial) == (
        "rolled_back",
        2,
        2,
        1,
    )
    assert outcome.sha256 == left.artifact.sha256
    assert "commanded by the controller: operator" in outcome.reason
    watcher.wait_event(EventType.COMMAND_DONE)
    assert agent.current_model.info.serial == 1
    publisher.publish_raw(publisher.topics.commands(DEVICE), publisher.last_command_payload)
    replay = watcher.wait_event(EventType.COMMAND_REFUSED)  # a redelivery is a replay
    assert "ReplayError" in replay.reason
    assert str(command.serial) in replay.reason
    publisher.command_rollback(DEVICE, reason="again")
    wait_until(lambda: len([e for e in watcher.events() if e.type == EventType.COMMAND_DONE]) == 2)
    done = [e for e in watcher.events() if e.type == EventType.COMMAND_DONE]
    assert done[1].figures["ok"] == 0.0  # nothing left to roll back to
    assert len([e for e in watcher.events() if e.type == EventType.ROLLED_BACK]) == 1
    assert agent.current_model.info.serial == 1


def test_rollback_command_is_obeyed_while_a_download_waits(
    models, publisher, watcher, start_agent, tmp_path
):
    agent = start_agent()
    serve(agent, publisher, watcher, models.onnx_a, 1)
    serve(agent, publisher, watcher, models.onnx_b, 2)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=9, hidden=64)
    publisher.chunk_limit = publisher.frames_sent + 2  # the next download stalls after 2 chunks
    manifest = publisher.manifest(
        big, device_id=DEVICE, serial=3, golden_inputs=GOLDEN, version="v3"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.DOWNLOAD_STARTED, where=lambda e: e.serial == 3)
    publisher.command_rollback(DEVICE, reason="during download")
    rolled = watcher.wait_event(EventType.ROLLED_BACK)
    assert rolled.serial == 2  # the serial it left
    assert agent.current_model.info.serial == 1
    assert agent.updater.status == "updating"  # the download is still under way
    publisher.chunk_limit = None
    swapped = watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 3)
    assert swapped.at > rolled.at
    assert agent.current_model.info.serial == 3


def test_newer_manifest_supersedes_a_waiting_download(
    models, publisher, watcher, start_agent, tmp_path
):
    agent = start_agent()
    serve(agent, publisher, watcher, models.onnx_a, 1)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=10, hidden=64)
    stalled = publisher.manifest(
        big, device_id=DEVICE, serial=2, golden_inputs=GOLDEN, version="v2"
    )
    publisher.withheld.add(stalled.artifact.sha256)  # serial 2's download can never finish
    publisher.publish_desired(DEVICE, publisher.sign(stalled))
    watcher.wait_event(EventType.DOWNLOAD_STARTED, where=lambda e: e.serial == 2)
    newer = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=3, golden_inputs=GOLDEN, version="v3"
    )
    publisher.publish_desired(DEVICE, publisher.sign(newer))
    failed = watcher.wait_event(EventType.DOWNLOAD_FAILED, where=lambda e: e.serial == 2)
    assert failed.reason == "download of serial 2 superseded by serial 3"
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 3)
    assert agent.current_model.info.version == "v3"
    assert not [e for e in watcher.events() if e.type == EventType.SWAPPED and e.serial == 2]
