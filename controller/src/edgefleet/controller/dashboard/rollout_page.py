"""Rollout pages: the list of rollouts, and one rollout's waves, per-device state, gate figures
against their thresholds, and why it paused or rolled back."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.dashboard.fleet_page import rollout_summary
from edgefleet.controller.dashboard.html import badge, card, e, link, num, table, time_left, when
from edgefleet.controller.rollouts.convergence import wave_deadline
from edgefleet.controller.rollouts.gates import GatePolicy
from edgefleet.controller.rollouts.states import IN_FLIGHT, RolloutStatus
from edgefleet.controller.rollouts.tables import RolloutRow

STOPPED = frozenset(
    {
        RolloutStatus.PAUSED,
        RolloutStatus.ROLLING_BACK,
        RolloutStatus.ROLLED_BACK,
        RolloutStatus.ABORTED,
    }
)
CHECK_UNITS = {"error_rate": "ratio", "p95_regression": "ratio", "failures": "devices"}


def render_rollouts(session: Session) -> str:
    rollouts = session.scalars(select(RolloutRow).order_by(RolloutRow.id.desc()).limit(100))
    return card(
        "Rollouts",
        "".join(rollout_summary(r) for r in rollouts) or '<p class="empty">no rollout yet</p>',
        wide=True,
        cls="rollouts",
    )


def _figure(name: str, value: float | None) -> str:
    if value is None:
        return "—"
    if CHECK_UNITS.get(name) == "ratio":
        return f"{value:+.1%}" if name == "p95_regression" else f"{value:.2%}"
    return num(value, digits=0) if float(value).is_integer() else num(value)


def _verdict(check: dict[str, Any]) -> str:
    """passed, breached, or not judged (a p95 check short of requests on a side)."""
    if not check["passed"]:
        return "breached"
    figures = check.get("figures")
    judged = not figures or "regression_ms" in figures  # (gates before 0006 kept no figures)
    return "passed" if judged else "not judged"


def _gate(rollout: RolloutRow) -> str:
    policy: dict[str, Any] = rollout.policy or {}
    thresholds = table(
        ["threshold", "value"],
        (
            [e("failed devices allowed"), e(policy.get("max_failures"))],
            [e("max error rate"), f"{float(policy.get('max_error_rate', 0)):.2%}"],
            [e("max p95 regression"), f"+{float(policy.get('max_p95_regression', 0)):.0%}"],
            [
                e("and at least (absolute)"),
                num(policy.get("min_p95_regression_ms", GatePolicy().min_p95_regression_ms), "ms"),
            ],
            [e("soak per wave"), num(policy.get("soak_s"), "s", 1)],
            [e("min requests to judge latency, each side"), num(policy.get("min_requests"))],
            [e("on breach"), e(policy.get("on_breach"))],
            [e("install deadline per device"), num(policy.get("install_timeout_s"), "s", 0)],
            [
                e("converged devices needed per wave"),
                e(policy.get("min_converged") or "all online"),
            ],
            [e("device health watch"), num(policy.get("health_window_s"), "s", 0)],
        ),
    )
    gate = rollout.gate or {}
    checks = gate.get("checks") or []
    results = table(
        ["check", "measured", "threshold", "result", "detail"],
        (
            [e(c["name"]), _figure(c["name"], c.get("value")), _figure(c["name"], c["threshold"]),
             badge(_verdict(c)), e(c.get("detail", ""))]
            for c in checks
        ),
        empty="no wave has been judged yet (gates run after a wave settles and soaks)",
    )  # fmt: skip
    heading = f"<h3>Last evaluation (wave {int(gate['wave']) + 1})</h3>" if checks else ""
    return card("Gates", thresholds + heading + results)


def _waves(rollout: RolloutRow, now: datetime) -> str:
    rows = []
    previous = 0
    policy = GatePolicy.model_validate(rollout.policy or {})
    for index, cumulative in enumerate(rollout.waves):
        members = [d for d in rollout.devices if d.wave == index]
        states = Counter(d.state for d in members)
        if index < rollout.current_wave or rollout.status == RolloutStatus.COMPLETED:
            phase = "done"
        elif index == rollout.current_wave:
            phase = rollout.status if rollout.status in STOPPED else "in progress"
            if rollout.status == RolloutStatus.RUNNING and rollout.wave_started_at is not None:
                deadline = wave_deadline(rollout.wave_started_at, policy)
                phase = f"{phase}, {time_left(deadline, now)}"
        else:
            phase = "pending"
        rows.append(
            [
                f"{index + 1}" + (" (canary)" if index == 0 and len(rollout.waves) > 1 else ""),
                num(cumulative),
                num(cumulative - previous),
                " ".join(f"{badge(s)}&nbsp;{n}" for s, n in sorted(states.items())) or "—",
                e(phase),
            ]
        )
        previous = cumulative
    return card(
        "Waves",
        table(["wave", "devices so far", "devices in wave", "states", "phase"], rows),
    )


def render_rollout(session: Session, rollout: RolloutRow) -> str:
    now = datetime.now(UTC)
    why = ""
    if rollout.status in STOPPED and rollout.reason:
        status = e(rollout.status.replace("_", " "))
        why = f'<div class="why"><strong>Why {status}:</strong> {e(rollout.reason)}</div>'
    head = (
        rollout_summary(rollout)
        + why
        + f'<p class="muted">created {when(rollout.created_at, now)} · '
        f"updated {when(rollout.updated_at, now)}</p>"
    )
    devices = table(
        ["device", "wave", "state", "target", "serial", "sent", "deadline", "converged", "reason"],
        (
            [link(d.device_id, "devices", d.device_id), num(d.wave + 1), badge(d.state),
             e(d.target or "—"), e(d.serial or "—"), when(d.sent_at, now),
             time_left(d.deadline_at, now) if d.state in IN_FLIGHT else "—",
             when(d.converged_at, now), e(d.reason or "")]
            for d in rollout.devices
        ),
        empty="no devices",
        cls="devices",
    )  # fmt: skip
    return "".join(
        [
            card(f"Rollout #{rollout.id}", head, wide=True),
            _waves(rollout, now),
            _gate(rollout),
            card("Devices", devices, wide=True),
        ]
    )
