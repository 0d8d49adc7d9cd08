"""latency histograms

Wire v2 telemetry carries each window's latency as an exponential histogram: raw windows keep
it (a compact binary layout, ``fleet.tables.histogram_bytes``), and rollups keep the merge of
their windows' histograms beside the request-weighted mean percentiles of the windows that had
none (v1 agents), with the requests those stand for. Every rollup written before this revision
is of such summaries alone, so its percentiles stand for its requests.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry") as telemetry:
        telemetry.add_column(sa.Column("latency_hist", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("telemetry_rollups") as rollups:
        rollups.add_column(sa.Column("latency_hist", sa.LargeBinary(), nullable=True))
        rollups.add_column(
            sa.Column("summary_requests", sa.BigInteger(), nullable=False, server_default="0")
        )
    # A window with latency but no request counted once in the mean (telemetry.buckets).
    op.execute(
        "UPDATE telemetry_rollups SET summary_requests = "
        "CASE WHEN requests > 0 THEN requests ELSE windows END WHERE p95_ms IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("telemetry_rollups") as rollups:
        rollups.drop_column("summary_requests")
        rollups.drop_column("latency_hist")
    with op.batch_alter_table("telemetry") as telemetry:
        telemetry.drop_column("latency_hist")
