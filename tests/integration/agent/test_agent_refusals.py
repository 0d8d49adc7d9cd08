"""Every manifest that fails a step is refused with an event naming the reason, and the model
that was serving keeps serving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgefleet.shared import EventType, generate_signing_key
from support.agent_harness import DEVICE, x_batch

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


@pytest.fixture
def serving(models, publisher, watcher, start_agent):
    """An agent serving model A at serial 5."""
    agent = start_agent()
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=5, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    return agent


def still_serving_a(agent, models):
    inputs = x_batch(2, seed=42)
    np.testing.assert_allclose(
        agent.infer(inputs)["logits"], models.onnx_a.reference(inputs)["logits"], rtol=1e-5
    )
    assert agent.current_model.info.serial == 5


def refusal(watcher, kind, serial):
    return watcher.wait_event(kind, where=lambda e: e.serial == serial or e.serial is None)


def test_tampered_artifact_is_refused(serving, models, publisher, watcher):
    good = models.onnx_b.path.read_bytes()
    tampered = bytes([good[0] ^ 0xFF]) + good[1:]
    manifest = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN, served=tampered
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.VERIFY_FAILED)
    assert event.serial == 6
    assert "sha256" in event.reason
    still_serving_a(serving, models)


def test_bad_signature_is_refused(serving, models, publisher, watcher):
    manifest = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN)
    signed = publisher.sign(manifest)
    forged = signed.model_copy(update={"manifest": {**signed.manifest, "latency_budget_ms": 9e9}})
    publisher.publish_desired(DEVICE, forged)
    event = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert "SignatureError" in event.reason
    still_serving_a(serving, models)


def test_unknown_key_is_refused(serving, models, publisher, watcher):
    manifest = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest, generate_signing_key()))
    event = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert "unknown key" in event.reason
    still_serving_a(serving, models)


def test_replayed_lower_serial_is_refused(serving, models, publisher, watcher):
    manifest = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=4, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert "serial 4 is not above last accepted serial 5" in event.reason
    assert event.figures == {"serial": 4.0, "last_serial": 5.0}
    still_serving_a(serving, models)
    assert publisher.requested_indices(manifest.artifact.sha256) == []  # nothing fetched


def test_expired_manifest_is_refused(serving, models, publisher, watcher):
    created = datetime.now(UTC) - timedelta(hours=2)
    manifest = publisher.manifest(
        models.onnx_b,
        device_id=DEVICE,
        serial=6,
        golden_inputs=GOLDEN,
        created_at=created,
        ttl=timedelta(hours=1),
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert "expired" in event.reason
    still_serving_a(serving, models)


def test_other_devices_manifest_is_refused(serving, models, publisher, watcher):
    manifest = publisher.manifest(models.onnx_b, device_id="dev-2", serial=6, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))  # on dev-1's topic
    event = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert "'dev-2', not 'dev-1'" in event.reason
    still_serving_a(serving, models)


def test_golden_output_mismatch_is_refused(serving, models, publisher, watcher):
    wrong = [{"logits": models.onnx_b.reference(i)["logits"] + 0.5} for i in GOLDEN]
    manifest = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN, golden_outputs=wrong
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.VALIDATION_FAILED)
    assert "golden output mismatch" in event.reason
    assert event.figures["max_abs_error"] == pytest.approx(0.5, abs=1e-3)
    still_serving_a(serving, models)
    # the refused artifact is not kept on disk
    assert not (serving.store.artifacts_dir / manifest.artifact.sha256).exists()


def test_top1_disagreement_is_refused(serving, models, publisher, watcher):
    outputs = [models.onnx_b.reference(i) for i in GOLDEN]
    flipped = [{"logits": -o["logits"]} for o in outputs]  # argmax becomes argmin
    manifest = publisher.manifest(
        models.onnx_b,
        device_id=DEVICE,
        serial=6,
        golden_inputs=GOLDEN,
        golden_outputs=flipped,
        compare="top1",
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.VALIDATION_FAILED)
    assert "top-1 agreement" in event.reason
    still_serving_a(serving, models)


def test_nan_model_is_refused(serving, models, publisher, watcher):
    manifest = publisher.manifest(models.nan, device_id=DEVICE, serial=6, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.VALIDATION_FAILED)
    assert "NaN/Inf" in event.reason
    still_serving_a(serving, models)


def test_too_slow_model_is_refused(serving, models, publisher, watcher):
    manifest = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=6, golden_inputs=GOLDEN, latency_budget_ms=1e-6
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.VALIDATION_FAILED)
    assert "exceeds the budget" in event.reason
    assert event.figures["warm_latency_ms"] > event.figures["latency_budget_ms"]
    still_serving_a(serving, models)


def test_edgetpu_artifact_is_refused_without_the_delegate(serving, models, publisher, watcher):
    manifest = publisher.manifest(
        models.tflite_int8, device_id=DEVICE, serial=6, golden_inputs=[], target="edgetpu"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    event = watcher.wait_event(EventType.MANIFEST_REFUSED)
    assert "libedgetpu.so.1" in event.reason
    assert "refusing to run an Edge TPU model on the CPU" in event.reason
    assert publisher.requested_indices(manifest.artifact.sha256) == []
    still_serving_a(serving, models)


def test_refused_serial_is_not_retried_on_redelivery(serving, models, publisher, watcher):
    manifest = publisher.manifest(models.nan, device_id=DEVICE, serial=6, golden_inputs=GOLDEN)
    signed = publisher.sign(manifest)
    publisher.publish_desired(DEVICE, signed)
    watcher.wait_event(EventType.VALIDATION_FAILED)
    fetched = len(publisher.requested_indices(manifest.artifact.sha256))
    publisher.publish_desired(DEVICE, signed)  # a redelivery changes nothing
    # a later, valid manifest is still processed, so the redelivery has been consumed by then
    good = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=7, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(good))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 7)
    assert len(publisher.requested_indices(manifest.artifact.sha256)) == fetched
    assert [e.serial for e in watcher.events() if e.type == EventType.VALIDATION_FAILED] == [6]
    assert not [e for e in watcher.events() if e.type == EventType.MANIFEST_REFUSED]
