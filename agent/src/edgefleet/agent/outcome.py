"""The final outcome of a manifest on this device, as the retained state reports it."""

from __future__ import annotations

from datetime import UTC, datetime

from edgefleet.agent.slots import Slot
from edgefleet.shared.manifest import Manifest
from edgefleet.shared.messages import Outcome, OutcomeResult

MAX_REASON = 1024


def reason_with_figures(reason: str, figures: dict[str, float] | None = None) -> str:
    """``reason`` followed by its figures (``[name=value ...]``), so the state explains itself."""
    if not figures:
        return reason
    shown = " ".join(f"{name}={value:.6g}" for name, value in figures.items())
    return f"{reason} [{shown}]"


def outcome_of(manifest: Manifest, result: OutcomeResult, reason: str | None = None) -> Outcome:
    """The outcome ``result`` for ``manifest`` (any result but ``rolled_back``)."""
    return Outcome(
        serial=manifest.serial,
        sha256=manifest.artifact.sha256,
        result=result,
        reason=reason[:MAX_REASON] if reason else None,
        at=datetime.now(UTC),
    )


def rolled_back(left: Slot, now_active: Slot, reason: str) -> Outcome:
    """The device left ``left`` (the outcome is about its serial) for ``now_active``."""
    serial = left.manifest.serial
    return Outcome(
        serial=serial,
        sha256=left.manifest.artifact.sha256,
        result=OutcomeResult.ROLLED_BACK,
        reason=reason[:MAX_REASON],
        at=datetime.now(UTC),
        from_serial=serial,
        to_serial=now_active.manifest.serial,
    )
