"""Rollout tables: a rollout and one row per (rollout, device), on the registry's ``Base``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from edgefleet.controller.fleet.tables import utcnow
from edgefleet.controller.registry.db import Base


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(String(512))
    waves: Mapped[list[int]] = mapped_column(JSON)  # cumulative device counts per wave
    wave_spec: Mapped[str] = mapped_column(String(128))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)  # GatePolicy
    status: Mapped[str] = mapped_column(String(16), index=True)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    wave_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # last GateResult
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    devices: Mapped[list[RolloutDeviceRow]] = relationship(
        back_populates="rollout", cascade="all, delete-orphan", order_by="RolloutDeviceRow.id"
    )


class RolloutDeviceRow(Base):
    __tablename__ = "rollout_devices"
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id"),
        Index("ix_rollout_devices_golden", "golden_sha256"),
        Index("ix_rollout_devices_index", "index_sha256"),
        Index("ix_rollout_devices_golden_index", "golden_index_sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    target: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    serial: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # SlotInfo
    signed_manifest: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The golden file a schema-2 manifest names: served to this device like its artifact.
    golden_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The chunk indexes of the artifact and of the golden file a schema-2 manifest names.
    index_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    golden_index_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    # Offline when its wave started: pending, not counted, until it comes back.
    offline_at_start: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    manifest_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    converged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    rollout: Mapped[RolloutRow] = relationship(back_populates="devices")
