"""A re-signed desired state (new serial, same artifact and target) renews the active slot: no
download, no reload, outcome swapped "renewed", and the new serial survives a restart."""

from __future__ import annotations

from edgefleet.shared import EventType, HealthPolicy, OutcomeResult
from support.agent_harness import DEVICE, x_batch

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def test_renewal_keeps_the_running_model(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    data_dir = tmp_path / "agent-data"
    agent = start_agent(data_dir=data_dir)
    first = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(first))
    watcher.wait_event(EventType.SWAPPED)
    model = agent.current_model
    for i in range(7):
        agent.infer(x_batch(1, seed=i))
    fetched = len(publisher.requested_indices(first.artifact.sha256))
    sha = first.artifact.sha256

    renewed = publisher.manifest(
        models.onnx_a,
        device_id=DEVICE,
        serial=2,
        golden_inputs=GOLDEN,
        health=HealthPolicy(window_s=5, min_requests=1),  # applies to later swaps only
    )
    assert renewed.artifact.sha256 == sha
    publisher.publish_desired(DEVICE, publisher.sign(renewed))
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 2)
    outcome = state.last_outcome
    assert outcome.result == OutcomeResult.SWAPPED
    assert outcome.reason == f"renewed: already running {sha[:12]}"
    assert outcome.sha256 == sha
    assert (state.status, state.active.serial, state.last_serial) == ("serving", 2, 2)
    assert state.previous is None  # the same artifact does not become its own previous slot
    assert state.progress is None

    assert agent.current_model is model  # not reloaded
    assert agent.current_model.info.serial == 1  # what it loaded; the slot carries the new one
    assert agent.metrics.since_load(model.key).requests == 7  # no metrics reset
    assert len(publisher.requested_indices(sha)) == fetched  # nothing downloaded
    kinds = [(e.type, e.serial) for e in watcher.events() if e.serial == 2]
    assert kinds == [(EventType.MANIFEST_RECEIVED, 2)]
    assert agent.updater.keeper.watch is None

    agent.stop()
    watcher.wait_state(lambda s: s.status == "offline")
    restarted = start_agent(data_dir=data_dir)
    booted = watcher.wait_event(EventType.BOOTED, where=lambda e: e.serial == 2)
    assert booted.reason == "serving demo 1.0.0 serial 2"
    assert restarted.store.active.info.serial == 2
    again = retained(lambda s: s.status == "serving" and s.seq > state.seq)
    assert again.last_outcome == outcome
    assert again.active.serial == 2
    publisher.publish_desired(DEVICE, publisher.sign(renewed))  # a redelivery changes nothing
    publisher.command_rollback(DEVICE)  # one queue, in order: done means the redelivery was too
    watcher.wait_event(EventType.COMMAND_DONE)
    assert retained().last_outcome == outcome


def test_same_bytes_under_a_new_version_are_installed(
    models, publisher, watcher, start_agent, retained
):
    agent = start_agent()
    first = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(first))
    watcher.wait_event(EventType.SWAPPED)
    fetched = len(publisher.requested_indices(first.artifact.sha256))
    relabelled = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=2, golden_inputs=GOLDEN, version="1.0.1"
    )
    publisher.publish_desired(DEVICE, publisher.sign(relabelled))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 2)
    outcome = retained(lambda s: s.last_outcome.serial == 2).last_outcome
    assert (outcome.result, outcome.reason) == (OutcomeResult.SWAPPED, None)
    assert agent.current_model.info.version == "1.0.1"  # telemetry carries the new name
    assert len(publisher.requested_indices(first.artifact.sha256)) == fetched  # bytes reused
