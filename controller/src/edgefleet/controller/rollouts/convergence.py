"""Fleet truth: each rollout-device state, and each wave's verdict, as pure functions.

A target's state is a function of what was issued (serial, sha256, when, deadline), what the
device last reported in its retained state (active slot, last outcome, progress, online), and
the clock. Nothing else decides it: events are an audit log, and offline is never evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from edgefleet.controller.registry.db import aware
from edgefleet.controller.rollouts.states import FAILURES, TargetState


class WaveTiming(Protocol):
    """The policy figures a wave's deadline is made of (``GatePolicy`` has them)."""

    @property
    def install_timeout_s(self) -> float: ...
    @property
    def soak_s(self) -> float: ...


# Outcome results (edgefleet.shared.OutcomeResult values) that fail the serial they are about.
FAILED_RESULTS = frozenset(
    {"refused", "validation_failed", "download_failed", "io_error", "too_slow"}
)


@dataclass(frozen=True, slots=True)
class Issued:
    """What the controller issued to one device in one rollout."""

    state: TargetState
    serial: int | None
    sha256: str | None
    sent_at: datetime | None
    deadline_at: datetime | None
    offline_at_start: bool = False
    deadline_cap: datetime | None = None  # the wave's own deadline, for devices it waits on
    payload_sha256: str | None = None  # of the desired-state bytes sent to it, when asked


@dataclass(frozen=True, slots=True)
class ReportedOutcome:
    serial: int
    sha256: str | None  # None only for outcomes inferred from a v1 agent's events
    result: str
    reason: str | None = None
    from_serial: int | None = None
    to_serial: int | None = None

    def about(self, serial: int | None, sha256: str | None) -> bool:
        return self.serial == serial and (self.sha256 is None or self.sha256 == sha256)


@dataclass(frozen=True, slots=True)
class ReportedProgress:
    serial: int
    phase: str
    percent: float
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class ReportedDrop:
    """A desired-state payload the device dropped unread (too large, malformed)."""

    payload_sha256: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reported:
    """What the device last said about itself (its retained state), and whether it is online."""

    online: bool
    status: str = "unknown"
    active_serial: int | None = None
    active_sha256: str | None = None
    outcome: ReportedOutcome | None = None
    progress: ReportedProgress | None = None
    online_since: datetime | None = None
    offline_since: datetime | None = None
    last_seen: datetime | None = None
    dropped: ReportedDrop | None = None


@dataclass(frozen=True, slots=True)
class Derived:
    state: TargetState
    reason: str | None
    deadline_at: datetime | None


def effective_deadline(
    issued: Issued, reported: Reported, install_timeout: timedelta
) -> datetime | None:
    """When an issued manifest must have converged.

    A device that was offline when it was sent its manifest gets the full install timeout from
    when it came back; any other device's deadline runs from the manifest's publication (or,
    if the broker never took it, its issue), online or not, and ends no later than the
    deadline of the wave that waits on it.
    """
    deadline = issued.deadline_at
    if deadline is None:  # the broker never took it: its time runs from the issue all the same
        if issued.sent_at is None:
            return None
        deadline = issued.sent_at + install_timeout
    if issued.offline_at_start:
        if reported.online and reported.online_since is not None:
            return max(deadline, reported.online_since + install_timeout)
        return deadline
    if issued.deadline_cap is not None:  # never later than the wave that waits on it
        return min(deadline, issued.deadline_cap)
    return deadline


def derive_target(
    issued: Issued, reported: Reported, install_timeout: timedelta, now: datetime
) -> Derived:
    """The state of one rollout-device from what was issued, what was reported and the clock."""
    state = issued.state
    deadline = effective_deadline(issued, reported, install_timeout)
    if state not in (
        TargetState.SENT,
        TargetState.PENDING,
        TargetState.ACTIVE,
        TargetState.TIMED_OUT,
        TargetState.REVERTING,
    ):
        return Derived(state, None, deadline)
    runs_it = (
        reported.active_serial == issued.serial
        and issued.serial is not None
        and reported.active_sha256 == issued.sha256
    )
    outcome = reported.outcome
    reverting = state is TargetState.REVERTING
    if state is TargetState.ACTIVE:
        return _derive_converged(issued, reported, deadline)
    if runs_it:
        done = TargetState.REVERTED if reverting else TargetState.ACTIVE
        late = " after its deadline" if state is TargetState.TIMED_OUT else ""
        return Derived(done, f"converged{late} on serial {issued.serial}", deadline)
    if outcome is not None and outcome.about(issued.serial, issued.sha256):
        what = "revert " if reverting else ""
        if outcome.result in FAILED_RESULTS:
            reason = f"{what}{outcome.result}: {outcome.reason or 'no reason given'}"
            return Derived(TargetState.FAILED, reason, deadline)
        if outcome.result == "rolled_back" and not reverting:
            return Derived(TargetState.ROLLED_BACK, _rolled_back_reason(outcome), deadline)
    dropped = reported.dropped
    if dropped is not None and dropped.payload_sha256 == issued.payload_sha256:
        reason = f"the device dropped its desired state unread: {dropped.reason}"
        return Derived(TargetState.FAILED, reason, deadline)
    if state is TargetState.TIMED_OUT:
        return Derived(state, None, deadline)
    if (
        deadline is not None
        and now >= deadline
        and not (issued.offline_at_start and not reported.online)
    ):
        what = "revert timed out" if reverting else "timed out"
        waited = _duration(now - issued.sent_at) if issued.sent_at else "its deadline"
        reason = f"{what} after {waited}: {describe_report(reported, issued.serial)}"
        return Derived(TargetState.TIMED_OUT, reason, deadline)
    if reverting:
        return Derived(state, None, deadline)
    if issued.offline_at_start and not reported.online:
        return Derived(TargetState.PENDING, "offline since its wave started", deadline)
    return Derived(TargetState.SENT, None, deadline)


def _derive_converged(issued: Issued, reported: Reported, deadline: datetime | None) -> Derived:
    outcome = reported.outcome
    if (
        outcome is not None
        and outcome.result == "rolled_back"
        and outcome.about(issued.serial, issued.sha256)
    ):
        return Derived(TargetState.ROLLED_BACK, _rolled_back_reason(outcome), deadline)
    left = (
        reported.active_serial is not None
        and issued.serial is not None
        and reported.active_serial < issued.serial
        and reported.active_sha256 != issued.sha256
    )
    if left:  # a v1 agent reports no outcome: it now runs an older serial than it converged on
        reason = f"device rolled back: now runs serial {reported.active_serial}"
        return Derived(TargetState.ROLLED_BACK, reason, deadline)
    return Derived(TargetState.ACTIVE, None, deadline)


def _rolled_back_reason(outcome: ReportedOutcome) -> str:
    return (
        f"device rolled back from serial {outcome.from_serial} to {outcome.to_serial}: "
        f"{outcome.reason or 'no reason given'}"
    )


def describe_report(reported: Reported, serial: int | None) -> str:
    """What the device last said, for a reason an operator reads."""
    parts: list[str] = []
    progress = reported.progress
    if progress is not None and progress.serial == serial:
        if progress.phase == "retrying":
            error = f": {progress.last_error}" if progress.last_error else ""
            parts.append(f"last reported retrying after {progress.attempts} local error(s){error}")
        else:
            parts.append(f"last reported {progress.phase} {progress.percent:.0f}%")
    elif reported.last_seen is None and reported.status == "unknown":
        parts.append("never reported")
    else:
        running = f" serial {reported.active_serial}" if reported.active_serial else ""
        if reported.status == "offline":  # the broker's last will, not the device, said that
            parts.append(f"running{running or ' no model'}")
        else:
            parts.append(f"last reported {reported.status}{running}")
    if not reported.online:
        since = reported.offline_since or reported.last_seen
        parts.append(f"offline since {since:%Y-%m-%d %H:%M:%S} UTC" if since else "offline")
    return ", ".join(parts)


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds >= 60:
        return f"{seconds // 60}m" + (f"{seconds % 60}s" if seconds % 60 else "")
    return f"{seconds}s"


# --- waves ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaveTarget:
    state: TargetState
    offline_at_start: bool


@dataclass(frozen=True, slots=True)
class WaveProgress:
    """Where the current wave stands before its gates are judged."""

    ready: bool  # every device that counts has an outcome and enough converged
    expired: bool  # the wave's own deadline passed without it being ready
    converged: int
    needed: int
    in_flight: int
    pending: int
    failed: int
    reason: str


def converged_needed(targets: Sequence[WaveTarget], min_converged: int | None) -> int:
    """How many devices of a wave must converge for it to pass.

    Default: every device that was online when the wave started and has not failed; an explicit
    ``min_converged`` is capped at the wave's eligible devices. Never fewer than one, unless no
    device of the wave can run the version at all (every one skipped).
    """
    eligible = [t for t in targets if t.state not in (TargetState.SKIPPED, TargetState.SUPERSEDED)]
    if not eligible:
        return 0  # nothing in this wave can run the version: nothing to wait for
    if min_converged is not None:
        return max(1, min(min_converged, len(eligible)))
    online = [t for t in eligible if not t.offline_at_start and t.state not in FAILURES]
    return max(1, len(online))


def wave_deadline(started_at: datetime, policy: WaveTiming) -> datetime:
    """When a wave started at ``started_at`` must be ready: install timeout plus soak."""
    return aware(started_at) + timedelta(seconds=policy.install_timeout_s + policy.soak_s)


def wave_progress(
    targets: Sequence[WaveTarget],
    *,
    min_converged: int | None,
    started_at: datetime,
    install_timeout: timedelta,
    now: datetime,
) -> WaveProgress:
    """Whether a wave is ready to be judged, still waiting, or out of time.

    Devices offline when the wave started neither pass nor fail it while they stay away; every
    other issued device must reach an outcome, which its install deadline guarantees. A wave
    must be ready by ``started_at + install_timeout``, so that with its soak it has passed or
    failed by :func:`wave_deadline`.
    """
    converged = sum(1 for t in targets if t.state is TargetState.ACTIVE)
    failed = sum(1 for t in targets if t.state in FAILURES)
    pending = sum(1 for t in targets if t.state is TargetState.PENDING)
    in_flight = sum(
        1
        for t in targets
        if t.state in (TargetState.SENT, TargetState.PLANNED) and not t.offline_at_start
    )
    needed = converged_needed(targets, min_converged)
    ready = in_flight == 0 and converged >= needed
    expired = not ready and now >= started_at + install_timeout
    if ready:
        reason = f"{converged} converged"
    else:
        reason = (
            f"{converged} of {needed} needed converged, {in_flight} in flight, "
            f"{pending} pending offline, {failed} failed"
        )
    return WaveProgress(ready, expired, converged, needed, in_flight, pending, failed, reason)
