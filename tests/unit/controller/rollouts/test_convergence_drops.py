"""A device that dropped its desired state unread (too large, malformed) fails that issue at
once, by the payload's digest; a drop of any other payload changes nothing. A too_slow outcome
fails its serial like any other final failure. Operator latency budgets go by selector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.controller.rollouts.convergence import (
    Issued,
    Reported,
    ReportedDrop,
    ReportedOutcome,
    derive_target,
)
from edgefleet.controller.rollouts.gates import GatePolicy, LatencyBudget
from edgefleet.controller.rollouts.states import TargetState

NOW = datetime(2026, 12, 1, tzinfo=UTC)
TIMEOUT = timedelta(minutes=15)
ISSUED = Issued(
    state=TargetState.SENT, serial=4, sha256="a" * 64, sent_at=NOW, deadline_at=NOW + TIMEOUT,
    payload_sha256="d" * 64,
)  # fmt: skip


def test_a_drop_of_the_payload_sent_fails_the_issue_at_once() -> None:
    report = Reported(
        online=True, status="serving", dropped=ReportedDrop("d" * 64, "PayloadTooLargeError: 2 MB")
    )
    derived = derive_target(ISSUED, report, TIMEOUT, NOW + timedelta(seconds=5))
    assert derived.state is TargetState.FAILED
    assert (
        derived.reason == "the device dropped its desired state unread: PayloadTooLargeError: 2 MB"
    )


def test_a_drop_of_another_payload_changes_nothing() -> None:
    report = Reported(online=True, status="serving", dropped=ReportedDrop("e" * 64, "junk"))
    assert derive_target(ISSUED, report, TIMEOUT, NOW).state is TargetState.SENT


def test_too_slow_is_a_final_failure_of_its_serial() -> None:
    outcome = ReportedOutcome(serial=4, sha256="a" * 64, result="too_slow", reason="over 3x")
    derived = derive_target(ISSUED, Reported(online=True, outcome=outcome), TIMEOUT, NOW)
    assert (derived.state, derived.reason) == (TargetState.FAILED, "too_slow: over 3x")


def test_latency_budgets_go_to_the_first_matching_class() -> None:
    policy = GatePolicy(
        latency_budgets=(
            LatencyBudget.parse("board=pi4:150ms"),
            LatencyBudget.parse("arch=aarch64:0.5s"),
        )
    )
    arm = {"arch": {"aarch64"}}
    assert policy.latency_budget_for({"board": "pi4"}, arm) == 150.0
    assert policy.latency_budget_for({"board": "pi5"}, arm) == 500.0
    assert policy.latency_budget_for({"board": "pi5"}, {"arch": {"x86_64"}}) is None
    for bad in ("board=pi4", "board=pi4:fast", ":150ms", "bad term:1ms"):
        with pytest.raises(ValueError, match=r"latency budget|selector|String should"):
            LatencyBudget.parse(bad)
