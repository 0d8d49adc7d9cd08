"""Manifest schema 2 on a real agent: golden pairs fetched as a file of their own and checked,
and latency judged on the device (the operator's class budget, else a ratio to the active
model measured here), with a ``too_slow`` outcome distinct from integrity failures."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edgefleet.shared import EventType, LatencyPolicy
from support import agent_models
from support.agent_harness import DEVICE, x_batch

GOLDEN = [x_batch(1, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """x [N,4] -> logits [N,3] like the small models, with ~2M multiply-adds per sample."""
    path = tmp_path_factory.mktemp("heavy") / "heavy.onnx"
    return agent_models.mlp(path, seed=5, sizes=(4, 1024, 1024, 1024, 3))


def send(publisher, model, serial, **kwargs):
    manifest = publisher.manifest(
        model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN, version=f"v{serial}",
        chunk_size=256 * 1024, schema=2, **kwargs,
    )  # fmt: skip
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    return manifest


def test_golden_pairs_travel_as_a_verified_file_and_are_checked(
    models, publisher, watcher, start_agent, retained
):
    start_agent()
    manifest = send(publisher, models.onnx_a, 1)
    swapped = watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 1)
    assert swapped.figures["golden_pairs"] == 3.0  # the file was fetched and every pair run
    golden = manifest.golden_ref
    assert golden is not None
    assert manifest.golden is None
    assert publisher.requested_indices(golden.sha256) == list(range(golden.chunk_count))
    # The same model with outputs that are not its own: the file is checked, not just fetched.
    wrong = [{"logits": np.zeros((1, 3), np.float32)} for _ in GOLDEN]
    send(publisher, models.onnx_b, 2, golden_outputs=wrong)
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 2)
    assert state.last_outcome.result == "validation_failed"
    assert "golden output mismatch" in state.last_outcome.reason
    assert state.active.serial == 1


def test_a_golden_file_that_does_not_hash_right_is_refused(
    models, publisher, watcher, start_agent, retained
):
    start_agent()
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, schema=2
    )
    ref = manifest.golden_ref
    publisher.served[ref.sha256] = publisher.artifacts[ref.sha256].replace(b"allclose", b"top1xxxx")
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 1)
    assert state.last_outcome.result in {"refused", "download_failed"}
    assert state.active is None
    tampered = hashlib.sha256(publisher.served[ref.sha256]).hexdigest()
    assert tampered != ref.sha256


def test_latency_is_judged_against_the_active_model_on_this_device(
    models, publisher, watcher, start_agent, retained, heavy
):
    start_agent()
    send(publisher, models.onnx_a, 1)
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 1)
    # Far slower than the active model here: over 3x it, and no floor to hide under.
    send(publisher, heavy, 2, latency=LatencyPolicy(max_ratio_to_active=3.0, floor_ms=0.0))
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 2)
    outcome = state.last_outcome
    assert outcome.result == "too_slow", outcome
    assert "over 3x the active model's" in outcome.reason
    assert "active_warm_latency_ms=" in outcome.reason
    assert state.active.serial == 1
    # With room for it (a generous ratio), the same model is accepted and its figures reported.
    send(publisher, heavy, 3, latency=LatencyPolicy(max_ratio_to_active=1000.0, floor_ms=0.0))
    swapped = watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 3)
    figures = swapped.figures
    assert figures["warm_latency_ms"] > 3 * figures["active_warm_latency_ms"]
    assert figures["max_ratio_to_active"] == 1000.0


def test_an_operator_budget_for_the_class_wins_and_without_a_baseline_it_is_accepted(
    models, publisher, watcher, start_agent, retained, heavy
):
    start_agent()
    # No active model to compare with, no budget: accepted, its latency reported.
    send(publisher, heavy, 1, latency=LatencyPolicy(reference_p95_ms=0.5, reference_host="ci"))
    swapped = watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 1)
    assert "active_warm_latency_ms" not in swapped.figures
    assert swapped.figures["controller_p95_ms"] == 0.5  # a reference, not a budget
    # The operator's budget for its class refuses what is slower, ratio or not.
    budget = LatencyPolicy(budget_ms=0.001, max_ratio_to_active=1000.0)
    send(publisher, models.onnx_b, 2, latency=budget)
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 2)
    assert state.last_outcome.result == "too_slow"
    assert "exceeds the budget of 0.001 ms for its class" in state.last_outcome.reason
