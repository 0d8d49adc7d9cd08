"""golden files and dropped desired states

Manifest schema 2 sends golden pairs as a file of their own: each target remembers its sha256 so
the chunk server serves it to the device it was issued to. A device reports the desired-state
payload it dropped before it could read a serial from it (``desired_error``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as devices:
        devices.add_column(sa.Column("desired_error", sa.JSON(), nullable=True))
    with op.batch_alter_table("rollout_devices") as targets:
        targets.add_column(sa.Column("golden_sha256", sa.String(64), nullable=True))
    op.create_index("ix_rollout_devices_golden", "rollout_devices", ["golden_sha256"])


def downgrade() -> None:
    op.drop_index("ix_rollout_devices_golden", "rollout_devices")
    with op.batch_alter_table("rollout_devices") as targets:
        targets.drop_column("golden_sha256")
    with op.batch_alter_table("devices") as devices:
        devices.drop_column("desired_error")
