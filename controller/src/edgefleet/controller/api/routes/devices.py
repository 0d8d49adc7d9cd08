"""Devices: the registry built from hello, state and last-will messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from edgefleet.controller.api.deps import ServiceDep, SessionDep, TokenDep
from edgefleet.controller.api.errors import device_not_found
from edgefleet.controller.api.openapi import OPEN_ON_LOOPBACK, error_responses
from edgefleet.controller.api.schemas import (
    DeviceIdPath,
    DevicePublic,
    EventPublic,
    RolloutAction,
    Selector,
)
from edgefleet.controller.fleet.tables import DeviceRow, EventRow
from edgefleet.controller.rollouts.facts import device_online
from edgefleet.controller.rollouts.planner import matching_devices
from edgefleet.shared import Command, CommandType

router = APIRouter(
    prefix="/api/devices", tags=["devices"], responses=error_responses(400, 401, 403, 422)
)


class CommandAccepted(BaseModel):
    command_id: str


def to_public(row: DeviceRow, offline_after_s: float, now: datetime) -> DevicePublic:
    """A device as the API shows it: ``online`` is flag plus freshness, as everywhere else."""
    public = DevicePublic.model_validate(row)
    online = device_online(row, now, timedelta(seconds=offline_after_s))
    return public.model_copy(update={"online": online})


@router.get("", response_model=list[DevicePublic], openapi_extra=OPEN_ON_LOOPBACK)
def list_devices(
    session: SessionDep, service: ServiceDep, selector: Annotated[Selector, Query()] = "*"
) -> list[DevicePublic]:
    """Devices matching a label selector such as ``site=plant-3,accel=edgetpu``."""
    now = datetime.now(UTC)
    after = service.settings.offline_after_s
    return [to_public(row, after, now) for row in matching_devices(session, selector)]


@router.get(
    "/{device_id}",
    response_model=DevicePublic,
    responses=error_responses(404, descriptions={404: "no such device"}),
    openapi_extra=OPEN_ON_LOOPBACK,
)
def get_device(device_id: DeviceIdPath, session: SessionDep, service: ServiceDep) -> DevicePublic:
    """One device: what it reported, and whether it is online now."""
    row = session.get(DeviceRow, device_id)
    if row is None:
        raise device_not_found(device_id)
    return to_public(row, service.settings.offline_after_s, datetime.now(UTC))


@router.get("/{device_id}/events", response_model=list[EventPublic], openapi_extra=OPEN_ON_LOOPBACK)
def device_events(
    device_id: DeviceIdPath,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventRow]:
    """The device's events, newest first (none for a device never seen)."""
    return list(
        session.scalars(
            select(EventRow)
            .where(EventRow.device_id == device_id)
            .order_by(EventRow.at.desc())
            .limit(limit)
        )
    )


@router.post(
    "/{device_id}/rollback",
    dependencies=[TokenDep],
    status_code=202,
    response_model=CommandAccepted,
    responses=error_responses(404, 413, descriptions={404: "no such device"}),
)
async def rollback_device(
    device_id: DeviceIdPath, body: RolloutAction, service: ServiceDep, session: SessionDep
) -> CommandAccepted:
    """Command one device to swap back to its previous slot."""
    device = await asyncio.to_thread(session.get, DeviceRow, device_id)
    if device is None:
        raise device_not_found(device_id)
    command = Command(
        device_id=device_id,
        type=CommandType.ROLLBACK,
        reason=body.reason or "operator",
        issued_at=datetime.now(UTC),
    )
    await service.send_command(command, wire_version=device.wire_version or 1)
    return CommandAccepted(command_id=str(command.command_id))
