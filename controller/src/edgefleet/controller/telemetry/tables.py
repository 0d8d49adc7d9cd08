"""Rollup tables: per-minute and per-hour aggregates of the raw telemetry, and rollup watermarks.

Raw points live in ``fleet.tables`` (``TelemetryRow``, ``SystemSampleRow``). A rollup row holds one
bucket of ``resolution_s`` seconds. Its latency has two parts that merge on: ``latency_hist``, the
exact merge of the histograms of the windows that carried one; and ``p50_ms`` to ``p99_ms``, the
request-weighted means of the percentiles of the windows that carried only a summary (v1 agents),
standing for ``summary_requests`` requests (0 when there were none). Percentiles of windows cannot
be merged exactly: a bucket with a summary part is approximate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.controller.fleet.tables import HistogramBlob
from edgefleet.controller.registry.db import Base
from edgefleet.shared.histogram import Histogram


class LatencyRollupRow(Base):
    """One model version's figures on one device over one bucket (see the module's note on the
    two parts of its latency)."""

    __tablename__ = "telemetry_rollups"
    __table_args__ = (
        UniqueConstraint("resolution_s", "device_id", "model_id", "version", "bucket_start"),
        Index("ix_telemetry_rollups_res_bucket", "resolution_s", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resolution_s: Mapped[int] = mapped_column(Integer)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    device_id: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    windows: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_hist: Mapped[Histogram | None] = mapped_column(HistogramBlob, nullable=True)
    summary_requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class SystemRollupRow(Base):
    """A device's mean resource figures over one bucket."""

    __tablename__ = "system_rollups"
    __table_args__ = (
        UniqueConstraint("resolution_s", "device_id", "bucket_start"),
        Index("ix_system_rollups_res_bucket", "resolution_s", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resolution_s: Mapped[int] = mapped_column(Integer)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    device_id: Mapped[str] = mapped_column(String(64))
    samples: Mapped[int] = mapped_column(Integer)
    cpu_percent: Mapped[float] = mapped_column(Float)
    mem_used_bytes: Mapped[float] = mapped_column(Float)
    mem_total_bytes: Mapped[float] = mapped_column(Float)
    rss_bytes: Mapped[float] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)


class RollupMarkRow(Base):
    """Everything before ``rolled_until`` has been rolled up at ``resolution_s``."""

    __tablename__ = "telemetry_rollup_marks"

    resolution_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    rolled_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
