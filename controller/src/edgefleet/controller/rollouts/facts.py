"""Reading the database rows the convergence functions judge: a device's report, an issue.

The adapter between the tables and :mod:`edgefleet.controller.rollouts.convergence`: it turns
rows into the plain values the pure functions take, and applies what they derive.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.registry.db import aware
from edgefleet.controller.rollouts.convergence import (
    Derived,
    Issued,
    Reported,
    ReportedDrop,
    ReportedOutcome,
    ReportedProgress,
)
from edgefleet.controller.rollouts.states import TargetState, is_online
from edgefleet.controller.rollouts.tables import RolloutDeviceRow
from edgefleet.shared import SCHEMA_VERSION, SignedManifest, decode, encode, sha256_bytes


def _maybe(moment: datetime | None) -> datetime | None:
    return aware(moment) if moment is not None else None


def _outcome(raw: dict[str, Any] | None) -> ReportedOutcome | None:
    if not raw:
        return None
    return ReportedOutcome(
        serial=int(raw["serial"]),
        sha256=raw.get("sha256"),
        result=str(raw["result"]),
        reason=raw.get("reason"),
        from_serial=raw.get("from_serial"),
        to_serial=raw.get("to_serial"),
    )


def _progress(raw: dict[str, Any] | None) -> ReportedProgress | None:
    if not raw:
        return None
    total = int(raw.get("total_bytes") or 0)
    done = int(raw.get("done_bytes") or 0)
    return ReportedProgress(
        serial=int(raw["serial"]),
        phase=str(raw["phase"]),
        percent=min(100.0, 100.0 * done / total) if total > 0 else 0.0,
        attempts=int(raw.get("attempts") or 0),
        last_error=raw.get("last_error"),
    )


def device_online(row: DeviceRow, now: datetime, offline_after: timedelta) -> bool:
    """Whether a device row counts as online now (see :func:`states.is_online`)."""
    return is_online(bool(row.online), _maybe(row.last_seen), now, offline_after)


def reported(row: DeviceRow | None, now: datetime, offline_after: timedelta) -> Reported:
    """What a device last reported, from its row (a device never heard of reports nothing)."""
    if row is None:
        return Reported(online=False)
    active = row.active or {}
    return Reported(
        online=device_online(row, now, offline_after),
        status=row.status or "unknown",
        active_serial=active.get("serial"),
        active_sha256=active.get("sha256"),
        outcome=_outcome(row.last_outcome),
        progress=_progress(row.progress),
        online_since=_maybe(row.online_since),
        offline_since=_maybe(row.offline_since),
        last_seen=_maybe(row.last_seen) if row.status != "unknown" else None,
        dropped=_dropped(row.desired_error),
    )


def _dropped(raw: dict[str, Any] | None) -> ReportedDrop | None:
    if not raw:
        return None
    return ReportedDrop(payload_sha256=str(raw["payload_sha256"]), reason=str(raw["reason"]))


def desired_payload(signed_manifest: str, wire_version: int | None) -> bytes:
    """The bytes published as a device's desired state: the signed manifest (stored as a
    current-version envelope) in the envelope of the version the device speaks."""
    payload = signed_manifest.encode()
    if wire_version != SCHEMA_VERSION:
        payload = encode(decode(payload, SignedManifest), version=wire_version or 1)
    return payload


def issued(
    row: RolloutDeviceRow, deadline_cap: datetime | None = None, device: DeviceRow | None = None
) -> Issued:
    """The issue on ``row``; with the ``device`` row, also the digest of the payload it was sent
    when the device reports a dropped one (the only time it is needed)."""
    digest = None
    if device is not None and device.desired_error and row.signed_manifest is not None:
        digest = sha256_bytes(desired_payload(row.signed_manifest, device.wire_version))
    return Issued(
        state=TargetState(row.state),
        serial=row.serial,
        sha256=row.sha256,
        sent_at=_maybe(row.sent_at),
        deadline_at=_maybe(row.deadline_at),
        offline_at_start=bool(row.offline_at_start),
        deadline_cap=deadline_cap,
        payload_sha256=digest,
    )


def apply(row: RolloutDeviceRow, derived: Derived, now: datetime) -> bool:
    """Write a derived state onto its row; True when anything changed."""
    changed = False
    if derived.state != row.state:
        row.state = derived.state.value
        if derived.state in (TargetState.ACTIVE, TargetState.REVERTED):
            row.converged_at = now
        changed = True
    if derived.reason is not None and derived.reason != row.reason:
        row.reason = derived.reason
        changed = True
    if derived.deadline_at is not None and _maybe(row.deadline_at) != derived.deadline_at:
        row.deadline_at = derived.deadline_at
        changed = True
    if changed:
        row.updated_at = now
    return changed
