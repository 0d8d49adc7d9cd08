"""chunk indexes

Manifest schema 2 names each file's chunk hashes in a chunk index, a file of its own: each
target remembers the indexes of its artifact and golden file so the chunk server serves them to
the device they were issued to.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_devices") as targets:
        targets.add_column(sa.Column("index_sha256", sa.String(64), nullable=True))
        targets.add_column(sa.Column("golden_index_sha256", sa.String(64), nullable=True))
    op.create_index("ix_rollout_devices_index", "rollout_devices", ["index_sha256"])
    op.create_index("ix_rollout_devices_golden_index", "rollout_devices", ["golden_index_sha256"])


def downgrade() -> None:
    op.drop_index("ix_rollout_devices_golden_index", "rollout_devices")
    op.drop_index("ix_rollout_devices_index", "rollout_devices")
    with op.batch_alter_table("rollout_devices") as targets:
        targets.drop_column("golden_index_sha256")
        targets.drop_column("index_sha256")
