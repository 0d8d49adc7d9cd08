"""The states of rollouts and of each (rollout, device), defined once, and what "online" means.

Every module that reads or shows a state imports it from here; only the rollout engine writes
them (through :mod:`edgefleet.controller.rollouts.convergence`), the planner sets the initial
ones and applies operator actions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from edgefleet.controller.registry.db import aware


class TargetState(StrEnum):
    """Where one device stands in one rollout."""

    PLANNED = "planned"  # in a later wave: nothing issued yet
    SENT = "sent"  # manifest issued; its install deadline runs
    PENDING = "pending"  # issued while the device was offline, and it still is: not counted
    ACTIVE = "active"  # the device runs the issued serial (converged)
    FAILED = "failed"  # the device reported a final failure for the issued serial
    TIMED_OUT = "timed_out"  # not converged by the install deadline
    ROLLED_BACK = "rolled_back"  # the device left the issued serial by itself (health watch)
    REVERTING = "reverting"  # the rollout rolls back: the previous version was issued
    REVERTED = "reverted"  # the device runs its previous version again
    SKIPPED = "skipped"  # no artifact of the version fits the device
    CANCELLED = "cancelled"  # planned in a rollout that stopped before its wave
    SUPERSEDED = "superseded"  # a newer rollout took the device over


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # by the operator or a gate (on_breach=pause): waits for an operator
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


# States the engine re-derives every tick from what the device reports.
DERIVED = frozenset(
    {
        TargetState.SENT,
        TargetState.PENDING,
        TargetState.ACTIVE,
        TargetState.TIMED_OUT,
        TargetState.REVERTING,
    }
)
# Issued and not yet at an outcome.
IN_FLIGHT = frozenset({TargetState.SENT, TargetState.PENDING, TargetState.REVERTING})
# Count against a wave's failure budget.
FAILURES = frozenset({TargetState.FAILED, TargetState.TIMED_OUT, TargetState.ROLLED_BACK})
# Statuses of rollouts still under way (shown as current on the fleet page).
UNFINISHED = frozenset({RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.ROLLING_BACK})
# Statuses in which the engine moves a rollout on.
STEPPING = frozenset({RolloutStatus.RUNNING, RolloutStatus.ROLLING_BACK})
# Statuses a rollout ends in (paused waits for the operator but is a known, reasoned state).
ENDED = frozenset(
    {
        RolloutStatus.COMPLETED,
        RolloutStatus.ROLLED_BACK,
        RolloutStatus.ABORTED,
        RolloutStatus.PAUSED,
    }
)
FINAL_STATUSES = frozenset(
    {RolloutStatus.COMPLETED, RolloutStatus.ROLLED_BACK, RolloutStatus.ABORTED}
)


def is_online(
    flag: bool, last_seen: datetime | None, now: datetime, offline_after: timedelta
) -> bool:
    """Online: not marked offline (last will) and heard from within ``offline_after``.

    The one definition used by the engine, the planner, the API, the dashboard and ``/metrics``.
    """
    return bool(flag) and last_seen is not None and now - aware(last_seen) <= offline_after
