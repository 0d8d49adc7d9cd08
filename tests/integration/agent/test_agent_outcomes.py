"""Every verified manifest ends in one final outcome in the retained state, read from the broker:
swapped, refused, validation_failed, download_failed; refusals of unverified payloads and old
serials change no outcome; a superseded serial gets none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.shared import EventType, OutcomeResult, generate_signing_key
from support import agent_models
from support.agent_harness import DEVICE, x_batch
from support.agent_models import BuiltModel
from support.mqtt import wait_until

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def outcome_is(serial: int, result: OutcomeResult):
    return lambda s: (
        s.last_outcome is not None
        and s.last_outcome.serial == serial
        and s.last_outcome.result == result
        and s.progress is None
    )


@pytest.fixture
def serving(models, publisher, watcher, start_agent, retained):
    """An agent serving model A at serial 5; its retained state says so."""
    agent = start_agent()
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=5, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    retained(outcome_is(5, OutcomeResult.SWAPPED))
    return agent


def test_swap_reports_swapped(models, publisher, watcher, start_agent, retained):
    start_agent()
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(outcome_is(1, OutcomeResult.SWAPPED))
    assert state.status == "serving"
    assert state.last_outcome.sha256 == manifest.artifact.sha256
    assert state.last_outcome.reason is None
    assert state.last_outcome.from_serial is None
    assert state.active.serial == 1
    assert state.updating_to is None


def test_unrunnable_artifact_is_refused(serving, models, publisher, retained):
    manifest = publisher.manifest(
        models.tflite_int8, device_id=DEVICE, serial=6, golden_inputs=[], target="edgetpu"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(outcome_is(6, OutcomeResult.REFUSED))
    assert state.last_outcome.sha256 == manifest.artifact.sha256
    assert "libedgetpu.so.1" in state.last_outcome.reason
    assert state.active.serial == 5
    assert state.last_serial == 6


def test_runtime_not_offered_is_refused(models, publisher, watcher, start_agent, retained):
    start_agent(runtimes=["litert"])
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(outcome_is(1, OutcomeResult.REFUSED))
    assert "configured for runtimes ['litert'] only" in state.last_outcome.reason
    assert state.status == "idle"


def test_artifact_that_does_not_load_is_refused(serving, models, publisher, retained, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model" * 20)
    model = BuiltModel(junk, models.onnx_a.signature, "onnx-fp32", reference=None)
    manifest = publisher.manifest(model, device_id=DEVICE, serial=6)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(outcome_is(6, OutcomeResult.REFUSED))
    assert "not a well-formed ONNX model" in state.last_outcome.reason
    assert state.active.serial == 5


def test_tampered_download_is_refused(serving, models, publisher, retained):
    good = models.onnx_b.path.read_bytes()
    tampered = good[:-1] + bytes([good[-1] ^ 0xFF])
    manifest = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN, served=tampered
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(outcome_is(6, OutcomeResult.REFUSED))
    assert state.last_outcome.sha256 == manifest.artifact.sha256
    assert "HashMismatchError" in state.last_outcome.reason


def test_failed_validation_reports_its_figures(serving, models, publisher, retained):
    wrong = [{"logits": models.onnx_b.reference(i)["logits"] + 0.5} for i in GOLDEN]
    manifest = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN, golden_outputs=wrong
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(outcome_is(6, OutcomeResult.VALIDATION_FAILED))
    reason = state.last_outcome.reason
    assert "golden output mismatch" in reason
    assert "max_abs_error=0.5" in reason
    assert "atol=0.0001" in reason
    assert state.active.serial == 5


def test_expired_manifest_is_refused_and_an_older_one_changes_nothing(
    serving, models, publisher, watcher, retained
):
    def expired(serial: int):
        return publisher.sign(
            publisher.manifest(
                models.onnx_b,
                device_id=DEVICE,
                serial=serial,
                golden_inputs=GOLDEN,
                created_at=datetime.now(UTC) - timedelta(hours=2),
                ttl=timedelta(hours=1),
            )
        )

    signed = expired(6)
    publisher.publish_desired(DEVICE, signed)
    state = retained(outcome_is(6, OutcomeResult.REFUSED))
    assert state.last_outcome.sha256 == signed.manifest["artifact"]["sha256"]
    assert "ExpiredManifestError: manifest expired at" in state.last_outcome.reason
    assert state.last_serial == 6
    assert publisher.requested_indices(state.last_outcome.sha256) == []
    refused = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert refused.serial == 6

    publisher.publish_desired(DEVICE, signed)  # a redelivery: already handled, silently
    publisher.publish_desired(DEVICE, expired(4))  # older than the last: an event only
    wait_until(
        lambda: len([e for e in watcher.events() if e.type == EventType.MANIFEST_REFUSED]) == 2
    )
    old = [e for e in watcher.events() if e.type == EventType.MANIFEST_REFUSED][1]
    assert old.serial is None
    assert "expired" in old.reason
    assert retained().last_outcome == state.last_outcome


def test_unverified_or_old_manifests_change_no_outcome(
    serving, models, publisher, watcher, retained
):
    before = retained()
    good = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=7, golden_inputs=GOLDEN)
    signed = publisher.sign(good)
    forged = signed.model_copy(update={"manifest": {**signed.manifest, "latency_budget_ms": 9e9}})
    publisher.publish_desired(DEVICE, forged)  # SignatureError
    publisher.publish_desired(DEVICE, publisher.sign(good, generate_signing_key()))  # unknown key
    other = publisher.manifest(models.onnx_b, device_id="dev-2", serial=8, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(other))  # WrongDeviceError
    old = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=4, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(old))  # ReplayError
    wait_until(
        lambda: len([e for e in watcher.events() if e.type == EventType.MANIFEST_REFUSED]) == 4
    )
    after = retained()
    assert after.last_outcome == before.last_outcome
    assert (after.last_outcome.serial, after.last_outcome.result) == (5, "swapped")
    assert after.seq == before.seq  # nothing to tell: no state was published
    assert after.last_serial == 5


def test_download_failure_is_final_and_not_restarted_on_redelivery(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    start_agent(fetch_timeout_s=1.0, chunk_timeout_s=0.3)
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN)
    publisher.withheld.add(manifest.artifact.sha256)  # no chunk ever answers
    signed = publisher.sign(manifest)
    publisher.publish_desired(DEVICE, signed)
    state = retained(outcome_is(1, OutcomeResult.DOWNLOAD_FAILED))
    assert state.last_outcome.sha256 == manifest.artifact.sha256
    assert "gave up after 1.0s" in state.last_outcome.reason
    assert state.status == "idle"
    assert state.detail.startswith("download failed serial 1")
    assert state.last_serial == 1

    publisher.publish_desired(DEVICE, signed)  # a redelivery does not start it again
    # a later, valid manifest is processed, so the redelivery has been consumed by then
    good = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=2, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(good))
    retained(outcome_is(2, OutcomeResult.SWAPPED))
    started = [e.serial for e in watcher.events() if e.type == EventType.DOWNLOAD_STARTED]
    assert started == [1, 2]


def test_superseded_serial_gets_no_outcome(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    start_agent()
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=10, hidden=64)
    stalled = publisher.manifest(big, device_id=DEVICE, serial=2, golden_inputs=GOLDEN)
    publisher.withheld.add(stalled.artifact.sha256)
    publisher.publish_desired(DEVICE, publisher.sign(stalled))
    watcher.wait_event(EventType.DOWNLOAD_STARTED, where=lambda e: e.serial == 2)
    newer = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=3, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(newer))
    retained(outcome_is(3, OutcomeResult.SWAPPED))
    states = watcher.states()
    assert [s for s in states if s.last_outcome is not None and s.last_outcome.serial == 2] == []
    assert any(s.progress is not None and s.progress.serial == 2 for s in states)
