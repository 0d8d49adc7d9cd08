"""Creating rollouts and changing their status: synchronous, one transaction each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.selectors import device_facts, parse_selector
from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.rollouts.errors import (
    NoDevicesError,
    RolloutConflictError,
    RolloutNotFoundError,
    RolloutStateError,
)
from edgefleet.controller.rollouts.facts import device_online
from edgefleet.controller.rollouts.gates import GatePolicy
from edgefleet.controller.rollouts.states import IN_FLIGHT, UNFINISHED, RolloutStatus, TargetState
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.rollouts.waves import parse_waves

_S = RolloutStatus
# Which actions apply in which status, and the status they lead to.
TRANSITIONS: dict[str, dict[RolloutStatus, RolloutStatus]] = {
    "pause": {_S.RUNNING: _S.PAUSED},
    "resume": {_S.PAUSED: _S.RUNNING},
    "abort": {_S.RUNNING: _S.ABORTED, _S.PAUSED: _S.ABORTED},
    "rollback": {
        _S.RUNNING: _S.ROLLING_BACK,
        _S.PAUSED: _S.ROLLING_BACK,
        _S.COMPLETED: _S.ROLLING_BACK,
    },
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
    offline_after: timedelta = timedelta(seconds=120),
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
    _refuse_if_held(session, [d.id for d in devices], "start a rollout on them")
    now = datetime.now(UTC)
    devices.sort(key=lambda d: (not device_online(d, now, offline_after), d.id))
    # A newer rollout decides these devices' desired state: older unfinished sends are void.
    for older in session.scalars(
        select(RolloutDeviceRow).where(
            RolloutDeviceRow.device_id.in_([d.id for d in devices]),
            RolloutDeviceRow.state.in_([TargetState.PLANNED, *IN_FLIGHT]),
        )
    ):
        older.state = TargetState.SUPERSEDED
        older.reason = "a newer rollout took over this device"
    plan = parse_waves(waves, len(devices))
    rollout = RolloutRow(
        model=model,
        version=version,
        selector=selector,
        waves=plan,
        wave_spec=waves,
        policy=policy.model_dump(),
        status=RolloutStatus.RUNNING,
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
                state=TargetState.PLANNED,
                previous=device.active,
                updated_at=now,
            )
        )
    session.add(rollout)
    session.flush()
    return rollout


def _refuse_if_held(session: Session, device_ids: list[str], action: str) -> None:
    """Raise when an unfinished rollout drives any of these devices.

    Raises:
        RolloutConflictError: naming that rollout and the devices it holds.
    """
    held = session.execute(
        select(RolloutRow.id, RolloutRow.status, RolloutDeviceRow.device_id)
        .join(RolloutDeviceRow, RolloutDeviceRow.rollout_id == RolloutRow.id)
        .where(
            RolloutRow.status.in_(list(UNFINISHED)),
            RolloutDeviceRow.device_id.in_(device_ids),
        )
        .order_by(RolloutRow.id, RolloutDeviceRow.device_id)
    ).all()
    if held:
        other, status = held[0][0], held[0][1]
        raise RolloutConflictError(other, status, [d for r, _, d in held if r == other], action)


def change_status(session: Session, rollout_id: int, action: str, reason: str | None) -> RolloutRow:
    """Apply ``pause``, ``resume``, ``abort`` or ``rollback`` to a rollout.

    Raises:
        RolloutNotFoundError: no such rollout.
        RolloutStateError: the action does not apply in the rollout's status.
    """
    rollout = session.get(RolloutRow, rollout_id)
    if rollout is None:
        raise RolloutNotFoundError(rollout_id)
    target = TRANSITIONS[action].get(RolloutStatus(rollout.status))
    if target is None:
        raise RolloutStateError(rollout_id, rollout.status, action)
    if action == "rollback":
        newer = session.execute(
            select(RolloutDeviceRow.rollout_id, RolloutDeviceRow.device_id).where(
                RolloutDeviceRow.device_id.in_([d.device_id for d in rollout.devices]),
                RolloutDeviceRow.rollout_id > rollout_id,
            )
        ).all()
        if newer:
            devices = sorted({d for _, d in newer})
            raise RolloutConflictError(newer[0][0], "newer", devices, "roll it back")
    now = datetime.now(UTC)
    rollout.status = target
    rollout.reason = reason or f"{action} requested by operator"
    rollout.updated_at = now
    if target is RolloutStatus.RUNNING:  # resumed: the current wave gets its full time again
        rollout.wave_started_at = now
    elif target is RolloutStatus.ABORTED:
        rollout.finished_at = now
    return rollout
