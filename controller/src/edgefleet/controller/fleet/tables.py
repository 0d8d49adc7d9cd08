"""Fleet tables: devices, their events and telemetry points, and the device messages the
database refused (dead letters), on the registry's ``Base``; and the column type that stores a
latency histogram."""

from __future__ import annotations

import struct
import sys
from array import array
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
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.controller.registry.db import Base
from edgefleet.shared.histogram import Histogram, HistogramFields


def utcnow() -> datetime:
    return datetime.now(UTC)


# The column's layout, version 1: a header, then the counts as little-endian unsigned integers
# of the narrowest width (2, 4 or 8 bytes) that holds the largest. 100 buckets of a window are
# 248 bytes, read back in 2 us (JSON: 350 bytes, 20 us; a fleet chart reads every window).
_HEADER = struct.Struct("<BbBBQiQddd")  # version, scale, width, flags, zero, offset, count, ...
_LAYOUT_VERSION = 1
_HAS_MIN, _HAS_MAX = 1, 2
_TYPECODES = {2: "H", 4: "I", 8: "Q"}
_BIG_ENDIAN = sys.byteorder == "big"


def histogram_bytes(histogram: HistogramFields) -> bytes:
    """A histogram as its database columns hold it (see ``_HEADER``)."""
    counts = histogram.counts
    top = max(counts, default=0)
    width = 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    flags = (_HAS_MIN if histogram.min is not None else 0) | (
        _HAS_MAX if histogram.max is not None else 0
    )
    packed = array(_TYPECODES[width], counts)
    if _BIG_ENDIAN:
        packed.byteswap()
    header = _HEADER.pack(
        _LAYOUT_VERSION, histogram.scale, width, flags, histogram.zero_count, histogram.offset,
        histogram.count, histogram.sum, histogram.min or 0.0, histogram.max or 0.0,
    )  # fmt: skip
    return header + packed.tobytes()


def histogram_of_bytes(data: bytes) -> Histogram:
    """The histogram :func:`histogram_bytes` wrote.

    Raises:
        ValueError: not a layout this controller wrote.
    """
    version, scale, width, flags, zero, offset, count, total, low, high = _HEADER.unpack_from(data)
    if version != _LAYOUT_VERSION or width not in _TYPECODES:
        raise ValueError(f"histogram column of layout {version}, width {width}: unknown")
    counts = array(_TYPECODES[width])
    counts.frombytes(data[_HEADER.size :])
    if _BIG_ENDIAN:
        counts.byteswap()
    return Histogram(
        scale, zero, offset, counts.tolist(), count, total,
        low if flags & _HAS_MIN else None, high if flags & _HAS_MAX else None,
    )  # fmt: skip


class HistogramBlob(TypeDecorator[Histogram]):
    """A latency histogram (scale, zero count, offset, counts, count, sum, min, max) in a
    compact binary layout (``histogram_bytes``): a BLOB on SQLite, BYTEA on PostgreSQL, read
    back as a :class:`Histogram`."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: HistogramFields | None, dialect: Dialect) -> bytes | None:
        return None if value is None else histogram_bytes(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> Histogram | None:
        return None if value is None else histogram_of_bytes(value)


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
    # The window's latencies (wire v2); None from a v1 agent, whose p50/p95/p99 are all there is.
    latency_hist: Mapped[Histogram | None] = mapped_column(HistogramBlob, nullable=True)


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
