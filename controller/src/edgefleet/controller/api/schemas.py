"""API schemas (request and response bodies), apart from wire models and database tables."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from edgefleet.controller.registry.db import aware
from edgefleet.controller.rollouts.gates import GatePolicy

# SQLite hands datetimes back naive (they are stored in UTC): every time the API shows says so.
UtcDatetime = Annotated[datetime, AfterValidator(aware)]


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    online: bool
    status: str
    arch: str
    cpu_count: int
    ram_bytes: int
    agent_version: str
    runtimes: list[dict[str, str]]
    accelerators: list[str]
    labels: dict[str, str]
    active: dict[str, Any] | None
    previous: dict[str, Any] | None
    last_seen: UtcDatetime
    last_telemetry: dict[str, Any] | None = None
    wire_version: int = Field(default=1, description="wire version the device speaks")
    last_outcome: dict[str, Any] | None = Field(
        default=None, description="how the device's last manifest ended (wire v2 agents)"
    )
    progress: dict[str, Any] | None = Field(
        default=None, description="the manifest the device is working on, if any"
    )
    online_since: UtcDatetime | None = None
    offline_since: UtcDatetime | None = None


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event_id: str
    device_id: str
    type: str
    at: UtcDatetime
    model_id: str | None
    version: str | None
    serial: int | None
    reason: str | None
    figures: dict[str, float]


class TelemetryPoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    window_end: UtcDatetime
    model_id: str
    version: str
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    selector: str = Field(default="*", max_length=512)
    waves: str = Field(default="1,10%,50%,100%", max_length=128)
    policy: GatePolicy = GatePolicy()


class RolloutAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1024)


class RolloutDevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    wave: int
    state: str
    target: str | None
    serial: int | None
    reason: str | None
    sent_at: UtcDatetime | None
    deadline_at: UtcDatetime | None = Field(
        default=None, description="install deadline of the issued manifest"
    )
    offline_at_start: bool = Field(
        default=False, description="offline when its wave started: pending, not counted"
    )
    converged_at: UtcDatetime | None


class RolloutPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    model: str
    version: str
    selector: str
    wave_spec: str
    waves: list[int]
    policy: dict[str, Any]
    status: str
    current_wave: int
    reason: str | None
    gate: dict[str, Any] | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    wave_started_at: UtcDatetime | None = None
    wave_deadline_at: UtcDatetime | None = Field(
        default=None, description="when the running wave must be ready or it breaches"
    )
    finished_at: UtcDatetime | None = None
    devices: list[RolloutDevicePublic]
    counts: dict[str, int] = Field(default_factory=dict)


class ArtifactPublic(BaseModel):
    target: str
    runtime: str
    sha256: str
    size: int
    latency_budget_ms: float
    report: dict[str, Any]


class VersionPublic(BaseModel):
    model: str
    version: str
    created_at: UtcDatetime
    summary: dict[str, Any]
    artifacts: list[ArtifactPublic]


class ModelPublic(BaseModel):
    name: str
    versions: list[str]
    created_at: UtcDatetime


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    broker_url: str
    broker_connected: bool
    embedded_broker: bool
    database: str
    devices: int
    ingest: dict[str, Any]
