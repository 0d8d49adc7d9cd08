"""edgefleet.agent.outcome: outcomes name their manifest; rollbacks the serial they left."""

from __future__ import annotations

from pathlib import Path

from edgefleet.agent.outcome import outcome_of, reason_with_figures, rolled_back
from edgefleet.agent.slots import Slot
from edgefleet.shared import OutcomeResult, generate_signing_key, sign_manifest
from support.samples import make_manifest

KEY = generate_signing_key()


def slot(serial: int, data: bytes) -> Slot:
    manifest = make_manifest(serial=serial, data=data)
    return Slot(sign_manifest(manifest, KEY), manifest, Path("/nonexistent"))


def test_reason_carries_the_figures():
    assert reason_with_figures("too slow") == "too slow"
    text = reason_with_figures("too slow", {"warm_latency_ms": 12.3456789, "budget": 10.0})
    assert text == "too slow [warm_latency_ms=12.3457 budget=10]"


def test_outcome_of_a_manifest():
    manifest = make_manifest(serial=4)
    outcome = outcome_of(manifest, OutcomeResult.REFUSED, "x" * 5000)
    assert (outcome.serial, outcome.sha256) == (4, manifest.artifact.sha256)
    assert len(outcome.reason) == 1024
    assert outcome_of(manifest, OutcomeResult.SWAPPED).reason is None


def test_rolled_back_names_the_serial_it_left():
    left, back = slot(7, b"new" * 10), slot(3, b"old" * 10)
    outcome = rolled_back(left, back, "error rate")
    assert (outcome.serial, outcome.from_serial, outcome.to_serial) == (7, 7, 3)
    assert outcome.sha256 == left.manifest.artifact.sha256
    assert outcome.result == "rolled_back"
