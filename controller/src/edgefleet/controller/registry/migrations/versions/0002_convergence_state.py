"""convergence state

What the engine needs to derive each target's state from reports and deadlines: the device's wire
version, state sequence, last outcome, progress and online/offline edges; when a rollout's wave
started and when it finished; each target's offline-at-start flag, install deadline and manifest
expiry. Rollouts 0.1.0 left unfinished get deadlines that run from now on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

from edgefleet.controller.registry.db import aware

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here, not imported from the code, which may rename them later.
UNFINISHED_ROLLOUTS = ("running", "paused", "rolling_back")
IN_FLIGHT_TARGETS = ("sent", "reverting")
INSTALL_DEADLINE = timedelta(seconds=900)


def upgrade() -> None:
    with op.batch_alter_table("devices") as devices:
        devices.add_column(
            sa.Column("wire_version", sa.Integer(), server_default="1", nullable=False)
        )
        devices.add_column(sa.Column("state_seq", sa.BigInteger(), nullable=True))
        devices.add_column(sa.Column("last_outcome", sa.JSON(), nullable=True))
        devices.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        devices.add_column(sa.Column("online_since", sa.DateTime(timezone=True), nullable=True))
        devices.add_column(sa.Column("offline_since", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("rollouts") as rollouts:
        rollouts.add_column(sa.Column("wave_started_at", sa.DateTime(timezone=True), nullable=True))
        rollouts.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("rollout_devices") as targets:
        # "0" rather than sa.false(): a literal lets SQLite add the column in place (an expression
        # makes batch mode rebuild the table), and PostgreSQL reads '0' as false.
        targets.add_column(
            sa.Column("offline_at_start", sa.Boolean(), server_default="0", nullable=False)
        )
        targets.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
        targets.add_column(
            sa.Column("manifest_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
    _start_unfinished_waves()
    _set_in_flight_deadlines()


def _start_unfinished_waves() -> None:
    """A wave without a start never times out: start 0.1.0's open waves at their last change."""
    rollouts = sa.table(
        "rollouts",
        sa.column("status", sa.String()),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("wave_started_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        rollouts.update()
        .where(rollouts.c.status.in_(UNFINISHED_ROLLOUTS))
        .values(wave_started_at=rollouts.c.updated_at)
    )


def _set_in_flight_deadlines() -> None:
    """Targets 0.1.0 had sent to get the install deadline it would have given them.

    Computed in Python: date arithmetic in SQL is different on every dialect.
    """
    targets = sa.table(
        "rollout_devices",
        sa.column("id", sa.Integer()),
        sa.column("state", sa.String()),
        sa.column("sent_at", sa.DateTime(timezone=True)),
        sa.column("deadline_at", sa.DateTime(timezone=True)),
    )
    bind = op.get_bind()
    sent = bind.execute(
        sa.select(targets.c.id, targets.c.sent_at).where(
            targets.c.state.in_(IN_FLIGHT_TARGETS), targets.c.sent_at.is_not(None)
        )
    ).all()
    if not sent:
        return
    bind.execute(
        targets.update()
        .where(targets.c.id == sa.bindparam("target_id"))
        .values(deadline_at=sa.bindparam("deadline")),
        [
            {"target_id": target_id, "deadline": aware(sent_at) + INSTALL_DEADLINE}
            for target_id, sent_at in sent
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("rollout_devices") as targets:
        targets.drop_column("manifest_expires_at")
        targets.drop_column("deadline_at")
        targets.drop_column("offline_at_start")
    with op.batch_alter_table("rollouts") as rollouts:
        rollouts.drop_column("finished_at")
        rollouts.drop_column("wave_started_at")
    with op.batch_alter_table("devices") as devices:
        for name in (
            "offline_since",
            "online_since",
            "progress",
            "last_outcome",
            "state_seq",
            "wire_version",
        ):
            devices.drop_column(name)
