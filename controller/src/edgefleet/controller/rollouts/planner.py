"""Creating rollouts and changing their status: synchronous, one transaction each."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.selectors import device_facts, parse_selector
from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.rollouts.errors import (
    NoDevicesError,
    RolloutNotFoundError,
    RolloutStateError,
)
from edgefleet.controller.rollouts.gates import GatePolicy
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.rollouts.waves import parse_waves

ACTIVE_STATUSES = ("running", "paused", "rolling_back")
# Which actions apply in which status, and the status they lead to.
TRANSITIONS: dict[str, dict[str, str]] = {
    "pause": {"running": "paused"},
    "resume": {"paused": "running"},
    "abort": {"running": "aborted", "paused": "aborted"},
    "rollback": {"running": "rolling_back", "paused": "rolling_back", "completed": "rolling_back"},
}


def matching_devices(session: Session, selector_text: str) -> list[DeviceRow]:
    selector = parse_selector(selector_text)
    rows = session.scalars(select(DeviceRow).order_by(DeviceRow.id)).all()
    return [
        row
        for row in rows
        if selector.matches(
            row.labels or {},
            device_facts(
                row.id, row.arch, [r["name"] for r in row.runtimes or []], row.accelerators or []
            ),
        )
    ]


def create_rollout(
    session: Session,
    registry: ModelRegistry,
    *,
    model: str,
    version: str,
    selector: str,
    waves: str,
    policy: GatePolicy,
) -> RolloutRow:
    """Plan a rollout: snapshot the matching devices and assign them to waves, canary first.

    Devices that are online come first, so the canary is a device that can answer.

    Raises:
        ModelNotFoundError: no such model version.
        SelectorError / WaveSpecError: a malformed selector or wave spec.
        NoDevicesError: the selector matches no device.
    """
    registry.get_version(model, version)
    parse_waves(waves, 1)  # a malformed spec is refused before anything else is looked up
    devices = matching_devices(session, selector)
    if not devices:
        raise NoDevicesError(selector)
    devices.sort(key=lambda d: (not d.online, d.id))
    # A newer rollout decides these devices' desired state: older unfinished sends are void.
    for older in session.scalars(
        select(RolloutDeviceRow).where(
            RolloutDeviceRow.device_id.in_([d.id for d in devices]),
            RolloutDeviceRow.state.in_(("planned", "sent", "reverting")),
        )
    ):
        older.state = "superseded"
        older.reason = "a newer rollout took over this device"
    plan = parse_waves(waves, len(devices))
    now = datetime.now(UTC)
    rollout = RolloutRow(
        model=model,
        version=version,
        selector=selector,
        waves=plan,
        wave_spec=waves,
        policy=policy.model_dump(),
        status="running",
        current_wave=0,
        created_at=now,
        updated_at=now,
    )
    wave = 0
    for position, device in enumerate(devices):
        while position >= plan[wave]:
            wave += 1
        rollout.devices.append(
            RolloutDeviceRow(
                device_id=device.id,
                wave=wave,
                state="planned",
                previous=device.active,
                updated_at=now,
            )
        )
    session.add(rollout)
    session.flush()
    return rollout


def change_status(session: Session, rollout_id: int, action: str, reason: str | None) -> RolloutRow:
    """Apply ``pause``, ``resume``, ``abort`` or ``rollback`` to a rollout.

    Raises:
        RolloutNotFoundError: no such rollout.
        RolloutStateError: the action does not apply in the rollout's status.
    """
    rollout = session.get(RolloutRow, rollout_id)
    if rollout is None:
        raise RolloutNotFoundError(rollout_id)
    target = TRANSITIONS[action].get(rollout.status)
    if target is None:
        raise RolloutStateError(rollout_id, rollout.status, action)
    rollout.status = target
    rollout.reason = reason or f"{action} requested by operator"
    rollout.updated_at = datetime.now(UTC)
    return rollout
