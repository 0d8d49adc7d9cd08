"""Rollouts: create, inspect, pause, resume, abort, roll back."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from sqlalchemy import select

from edgefleet.controller.api.deps import ServiceDep, SessionDep, TokenDep
from edgefleet.controller.api.openapi import OPEN_ON_LOOPBACK, error_responses
from edgefleet.controller.api.schemas import (
    MAX_ROLLOUT_ID,
    RolloutAction,
    RolloutCreate,
    RolloutPublic,
)
from edgefleet.controller.rollouts.convergence import wave_deadline
from edgefleet.controller.rollouts.errors import RolloutNotFoundError
from edgefleet.controller.rollouts.gates import GatePolicy
from edgefleet.controller.rollouts.planner import change_status, create_rollout
from edgefleet.controller.rollouts.states import RolloutStatus
from edgefleet.controller.rollouts.tables import RolloutRow

router = APIRouter(
    prefix="/api/rollouts", tags=["rollouts"], responses=error_responses(400, 401, 403, 422)
)
RolloutIdPath = Annotated[int, Path(ge=1, le=MAX_ROLLOUT_ID, description="the rollout's id")]


def to_public(row: RolloutRow) -> RolloutPublic:
    public = RolloutPublic.model_validate(row)
    deadline = None
    if row.status == RolloutStatus.RUNNING and row.wave_started_at is not None:
        deadline = wave_deadline(row.wave_started_at, GatePolicy.model_validate(row.policy))
    return public.model_copy(
        update={
            "counts": dict(Counter(d.state for d in row.devices)),
            "wave_deadline_at": deadline,
        }
    )


@router.get("", response_model=list[RolloutPublic], openapi_extra=OPEN_ON_LOOPBACK)
def list_rollouts(session: SessionDep) -> list[RolloutPublic]:
    """The 200 newest rollouts, newest first."""
    rows = session.scalars(select(RolloutRow).order_by(RolloutRow.id.desc()).limit(200))
    return [to_public(r) for r in rows]


@router.get(
    "/{rollout_id}",
    response_model=RolloutPublic,
    responses=error_responses(404, descriptions={404: "no such rollout"}),
    openapi_extra=OPEN_ON_LOOPBACK,
)
def get_rollout(rollout_id: RolloutIdPath, session: SessionDep) -> RolloutPublic:
    """One rollout: its waves, gate figures and every device's state."""
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise RolloutNotFoundError(rollout_id)
    return to_public(row)


@router.post(
    "",
    response_model=RolloutPublic,
    status_code=201,
    dependencies=[TokenDep],
    responses=error_responses(
        404,
        409,
        413,
        descriptions={
            404: "no such model version, or the selector matches no known device",
            409: "another rollout still drives some of the matched devices",
        },
    ),
)
async def start_rollout(body: RolloutCreate, service: ServiceDep) -> RolloutPublic:
    """Start a gated rollout of a registered model version to the devices the selector
    matches, in the waves given."""

    def create() -> RolloutPublic:
        with service.sessions.begin() as session:
            row = create_rollout(
                session,
                service.registry,
                model=body.model,
                version=body.version,
                selector=body.selector,
                waves=body.waves,
                policy=body.policy,
                offline_after=timedelta(seconds=service.settings.offline_after_s),
            )
            return to_public(row)

    public = await asyncio.to_thread(create)
    if service.rollouts is not None:
        service.rollouts.nudge()
    return public


Action = Literal["pause", "resume", "abort", "rollback"]


@router.post(
    "/{rollout_id}/{action}",
    response_model=RolloutPublic,
    dependencies=[TokenDep],
    responses=error_responses(
        404,
        409,
        413,
        descriptions={
            404: "no such rollout",
            409: "the action does not apply in the rollout's status, or a newer rollout has "
            "taken over its devices",
        },
    ),
)
async def act_on_rollout(
    rollout_id: RolloutIdPath, action: Action, body: RolloutAction, service: ServiceDep
) -> RolloutPublic:
    """Pause, resume, abort or roll back a rollout."""

    def apply() -> RolloutPublic:
        with service.sessions.begin() as session:
            return to_public(change_status(session, rollout_id, action, body.reason))

    public = await asyncio.to_thread(apply)
    if service.rollouts is not None:
        service.rollouts.nudge()
    return public
