"""Fleet tables: devices, their events and telemetry points, and the device messages the
database refused (dead letters), on the registry's ``Base``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.controller.registry.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arch: Mapped[str] = mapped_column(String(32), default="")
    cpu_count: Mapped[int] = mapped_column(Integer, default=0)
    ram_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    os: Mapped[str] = mapped_column(String(128), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    runtimes: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    accelerators: Mapped[list[str]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    active: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reported_last_serial: Mapped[int] = mapped_column(BigInteger, default=0)
    last_serial_issued: Mapped[int] = mapped_column(BigInteger, default=0)
    last_telemetry: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Wire version of the device's envelopes: messages to it are written in that version.
    wire_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    state_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # Outcome
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # Progress
    # A desired-state payload it dropped unread (DesiredError): a manifest it never saw.
    desired_error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    online_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    offline_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    serial: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    figures: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TelemetryRow(Base):
    """One model version's figures over one telemetry window of one device."""

    __tablename__ = "telemetry"
    __table_args__ = (
        Index("ix_telemetry_device_end", "device_id", "window_end"),
        Index("ix_telemetry_version_end", "model_id", "version", "window_end"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    client_errors: Mapped[int] = mapped_column(Integer, default=0)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    throughput_rps: Mapped[float] = mapped_column(Float, default=0.0)


class SystemSampleRow(Base):
    """A device's resource figures at the end of one telemetry window."""

    __tablename__ = "system_samples"
    __table_args__ = (Index("ix_system_device_end", "device_id", "window_end"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cpu_percent: Mapped[float] = mapped_column(Float)
    process_cpu_percent: Mapped[float] = mapped_column(Float)
    rss_bytes: Mapped[int] = mapped_column(BigInteger)
    mem_used_bytes: Mapped[int] = mapped_column(BigInteger)
    mem_total_bytes: Mapped[int] = mapped_column(BigInteger)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_free_bytes: Mapped[int] = mapped_column(BigInteger)


class DeadLetterRow(Base):
    """A device message the database refused, kept for the operator (bounded, see
    ``fleet.deadletters``); repeats of the same device, kind and error only count up."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        UniqueConstraint("device_id", "kind", "error_type"),
        Index("ix_dead_letters_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # the device channel: hello, state, events...
    topic: Mapped[str] = mapped_column(String(256))
    error_type: Mapped[str] = mapped_column(String(128))
    error: Mapped[str] = mapped_column(Text)  # truncated
    payload: Mapped[str] = mapped_column(Text)  # an excerpt of the message as JSON
    count: Mapped[int] = mapped_column(BigInteger, default=1)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
