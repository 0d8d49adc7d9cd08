"""Messages devices send to the controller: hello, state, telemetry, events, chunk requests.

Frozen pydantic models; they are validated at the edge and trusted inside.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    model_validator,
)

from edgefleet.shared.topics import DeviceId, Sha256Hex


class WireModel(BaseModel):
    """Base of every model that crosses the wire: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


MAX_SERIAL = 2**53  # serials stay exact in JSON numbers and in a signed 64-bit column
Serial = Annotated[int, Field(ge=1, le=MAX_SERIAL)]


RuntimeName = Literal["onnxruntime", "litert", "tflite_runtime"]
AcceleratorName = Literal["edgetpu"]


class RuntimeInfo(WireModel):
    name: RuntimeName
    version: str = Field(max_length=64)


class Hardware(WireModel):
    arch: str = Field(max_length=32, description="platform.machine(), e.g. aarch64, x86_64")
    cpu_count: int = Field(ge=1)
    ram_bytes: int = Field(ge=0)
    os: str = Field(default="", max_length=128)


class Hello(WireModel):
    """Published by a device on every connect: who it is and what it can run."""

    device_id: DeviceId
    agent_version: str = Field(max_length=64)
    hardware: Hardware
    runtimes: tuple[RuntimeInfo, ...] = ()
    accelerators: tuple[AcceleratorName, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    started_at: AwareDatetime


class DeviceStatus(StrEnum):
    STARTING = "starting"
    IDLE = "idle"  # online, no model
    SERVING = "serving"
    UPDATING = "updating"
    ERROR = "error"
    OFFLINE = "offline"  # set by the last will


class SlotInfo(WireModel):
    """What sits in a model slot on the device."""

    model_id: str = Field(max_length=128)
    version: str = Field(max_length=64)
    serial: NonNegativeInt = Field(le=MAX_SERIAL)
    sha256: Sha256Hex
    target: str = Field(max_length=32)


class OutcomeResult(StrEnum):
    """How the device's handling of one manifest ended. Every value is final for that serial."""

    SWAPPED = "swapped"  # the manifest's artifact is active (also: renewed, same artifact)
    REFUSED = "refused"  # verification or device checks refused it (integrity: not retried)
    VALIDATION_FAILED = "validation_failed"  # loaded, but golden pairs or latency failed
    DOWNLOAD_FAILED = "download_failed"  # the agent's own download retries are exhausted
    IO_ERROR = "io_error"  # local I/O (disk full, permissions) retried until its limit
    ROLLED_BACK = "rolled_back"  # the device left ``from_serial`` for ``to_serial``


class Outcome(WireModel):
    """The final result of one manifest on the device (wire v2), carried in the retained state.

    ``serial``/``sha256`` name the manifest it is about; for ``rolled_back`` that is the serial
    the device left (``from_serial``), and ``to_serial`` is the one it runs again.
    """

    serial: Serial
    sha256: Sha256Hex
    result: OutcomeResult
    reason: str | None = Field(default=None, max_length=1024)
    at: AwareDatetime
    from_serial: Serial | None = None
    to_serial: Serial | None = None

    @model_validator(mode="after")
    def _rollback_names_both_serials(self) -> Outcome:
        if self.result is OutcomeResult.ROLLED_BACK:
            if self.from_serial is None or self.to_serial is None:
                raise ValueError("a rolled_back outcome needs from_serial and to_serial")
            if self.from_serial != self.serial:
                raise ValueError("a rolled_back outcome is about the serial it left")
        elif self.from_serial is not None or self.to_serial is not None:
            raise ValueError("from_serial/to_serial belong to rolled_back outcomes only")
        return self


class ProgressPhase(StrEnum):
    DOWNLOADING = "downloading"
    INSTALLING = "installing"  # loading and validating
    RETRYING = "retrying"  # a local I/O error; the agent retries with backoff


class Progress(WireModel):
    """Where the device is with the manifest it is working on (wire v2)."""

    serial: Serial
    sha256: Sha256Hex
    phase: ProgressPhase
    done_bytes: NonNegativeInt = Field(default=0, le=2**53)
    total_bytes: NonNegativeInt = Field(default=0, le=2**53)
    attempts: NonNegativeInt = Field(default=0, le=1_000_000, description="local retries so far")
    last_error: str | None = Field(default=None, max_length=512)

    @property
    def percent(self) -> float:
        if self.total_bytes <= 0:
            return 0.0
        return min(100.0, 100.0 * self.done_bytes / self.total_bytes)


class DeviceState(WireModel):
    """Retained per-device state. The last will publishes ``status=offline``.

    Wire v2 adds ``last_outcome``, ``progress`` and ``seq``; a v1 state has none of them.
    ``seq`` increases with every state the agent publishes, across restarts, so a receiver can
    drop a state delivered after a newer one.
    """

    device_id: DeviceId
    status: DeviceStatus
    active: SlotInfo | None = None
    previous: SlotInfo | None = None
    last_serial: NonNegativeInt = Field(default=0, le=MAX_SERIAL)
    updating_to: SlotInfo | None = None
    detail: str | None = Field(default=None, max_length=1024)
    updated_at: AwareDatetime
    last_outcome: Outcome | None = None
    progress: Progress | None = None
    seq: NonNegativeInt | None = Field(default=None, le=2**63 - 1)


class LatencySummary(WireModel):
    """Latency percentiles in milliseconds over one telemetry window."""

    p50: NonNegativeFloat
    p95: NonNegativeFloat
    p99: NonNegativeFloat
    max: NonNegativeFloat


class ModelStats(WireModel):
    """Inference figures for one model version over one telemetry window."""

    model_id: str = Field(max_length=128)
    version: str = Field(max_length=64)
    requests: NonNegativeInt
    errors: NonNegativeInt = Field(description="model or runtime failures")
    client_errors: NonNegativeInt = Field(default=0, description="rejected bad requests")
    latency_ms: LatencySummary | None = None
    throughput_rps: NonNegativeFloat = 0.0


class SystemStats(WireModel):
    cpu_percent: NonNegativeFloat
    process_cpu_percent: NonNegativeFloat
    rss_bytes: NonNegativeInt
    mem_used_bytes: NonNegativeInt
    mem_total_bytes: NonNegativeInt
    temperature_c: float | None = None
    disk_free_bytes: NonNegativeInt


class Telemetry(WireModel):
    """Published every telemetry interval with QoS 0."""

    device_id: DeviceId
    window_start: AwareDatetime
    window_end: AwareDatetime
    models: tuple[ModelStats, ...] = ()
    system: SystemStats


class EventType(StrEnum):
    BOOTED = "booted"
    MANIFEST_RECEIVED = "manifest_received"
    MANIFEST_REFUSED = "manifest_refused"
    DOWNLOAD_STARTED = "download_started"
    DOWNLOAD_PROGRESS = "download_progress"
    DOWNLOAD_DONE = "download_done"
    DOWNLOAD_FAILED = "download_failed"
    VERIFY_FAILED = "verify_failed"
    LOAD_FAILED = "load_failed"
    VALIDATION_FAILED = "validation_failed"
    SWAPPED = "swapped"
    ROLLED_BACK = "rolled_back"
    SLOT_FALLBACK = "slot_fallback"
    COMMAND_DONE = "command_done"
    ERROR = "error"


class Event(WireModel):
    """Something happened on a device. ``event_id`` makes redelivery idempotent."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    device_id: DeviceId
    type: EventType
    at: AwareDatetime
    model_id: str | None = Field(default=None, max_length=128)
    version: str | None = Field(default=None, max_length=64)
    serial: NonNegativeInt | None = None
    reason: str | None = Field(default=None, max_length=2048)
    figures: dict[str, float] = Field(default_factory=dict, max_length=64)


class ChunkRequest(WireModel):
    """A device asks for the chunks of an artifact it is missing."""

    device_id: DeviceId
    sha256: Sha256Hex
    indices: tuple[NonNegativeInt, ...] = Field(max_length=65536)


class CommandType(StrEnum):
    ROLLBACK = "rollback"


class Command(WireModel):
    """An imperative order from the controller. Idempotent by ``command_id``."""

    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    device_id: DeviceId
    type: CommandType
    reason: str | None = Field(default=None, max_length=1024)
    issued_at: AwareDatetime
