"""Messages devices send to the controller: hello, state, telemetry, events, chunk requests.

Frozen pydantic models; they are validated at the edge and trusted inside.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from edgefleet.shared.bounds import (
    MAX_FIGURES,
    MAX_HISTOGRAM_BUCKETS,
    MAX_LABELS,
    MAX_MODELS_PER_WINDOW,
    MAX_RUNTIMES,
    ArchName,
    BucketIndex,
    ByteCount,
    Celsius,
    ChunkIndex,
    CpuCount,
    ErrorText,
    Figure,
    FigureName,
    HistogramScale,
    LabelKey,
    LabelValue,
    LatencyMs,
    LatencySumMs,
    LongReason,
    ModelName,
    OsName,
    Percent,
    ProcessCpuPercent,
    Reason,
    RetryCount,
    Serial,
    SerialOrZero,
    StateSeq,
    TargetName,
    Throughput,
    Timestamp,
    VersionName,
    WindowCount,
)
from edgefleet.shared.histogram import HistogramLayoutError, check_layout
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.topics import DeviceId, Sha256Hex


class WireModel(BaseModel):
    """Base of every model that crosses the wire: immutable, strict about unknown fields, and
    finite in every float (field bounds are in :mod:`edgefleet.shared.bounds`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


RuntimeName = Literal["onnxruntime", "litert", "tflite_runtime"]
AcceleratorName = Literal["edgetpu"]


class RuntimeInfo(WireModel):
    name: RuntimeName
    version: VersionName


class Hardware(WireModel):
    arch: ArchName = Field(description="platform.machine(), e.g. aarch64, x86_64")
    cpu_count: CpuCount
    ram_bytes: ByteCount
    os: OsName = ""


class Hello(WireModel):
    """Published by a device on every connect: who it is and what it can run."""

    device_id: DeviceId
    agent_version: VersionName
    hardware: Hardware
    runtimes: tuple[RuntimeInfo, ...] = Field(default=(), max_length=MAX_RUNTIMES)
    accelerators: tuple[AcceleratorName, ...] = Field(default=(), max_length=MAX_RUNTIMES)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    started_at: Timestamp


class DeviceStatus(StrEnum):
    STARTING = "starting"
    IDLE = "idle"  # online, no model
    SERVING = "serving"
    UPDATING = "updating"
    ERROR = "error"
    OFFLINE = "offline"  # set by the last will


class SlotInfo(WireModel):
    """What sits in a model slot on the device."""

    model_id: ModelName
    version: VersionName
    serial: SerialOrZero
    sha256: Sha256Hex
    target: TargetName


class OutcomeResult(StrEnum):
    """How the device's handling of one manifest ended. Every value is final for that serial."""

    SWAPPED = "swapped"  # the manifest's artifact is active (also: renewed, same artifact)
    REFUSED = "refused"  # verification or device checks refused it (integrity: not retried)
    VALIDATION_FAILED = "validation_failed"  # loaded, but golden pairs or latency failed
    DOWNLOAD_FAILED = "download_failed"  # the agent's own download retries are exhausted
    IO_ERROR = "io_error"  # local I/O (disk full, permissions) retried until its limit
    TOO_SLOW = "too_slow"  # valid, but slower on this device than its latency policy allows
    ROLLED_BACK = "rolled_back"  # the device left ``from_serial`` for ``to_serial``


class Outcome(WireModel):
    """The final result of one manifest on the device (wire v2), carried in the retained state.

    ``serial``/``sha256`` name the manifest it is about; for ``rolled_back`` that is the serial
    the device left (``from_serial``), and ``to_serial`` is the one it runs again.
    """

    serial: Serial
    sha256: Sha256Hex
    result: OutcomeResult
    reason: Reason | None = None
    at: Timestamp
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
    done_bytes: ByteCount = 0
    total_bytes: ByteCount = 0
    attempts: RetryCount = Field(default=0, description="local retries so far")
    last_error: ErrorText | None = None

    @property
    def percent(self) -> float:
        if self.total_bytes <= 0:
            return 0.0
        return min(100.0, 100.0 * self.done_bytes / self.total_bytes)


class DesiredError(WireModel):
    """A desired-state payload the device dropped before it could read a serial from it:
    oversize, not JSON, not a signed manifest (wire v2). ``payload_sha256`` names the bytes."""

    payload_sha256: Sha256Hex
    size: ByteCount
    reason: Reason
    at: Timestamp


class DeviceState(WireModel):
    """Retained per-device state. The last will publishes ``status=offline``.

    Wire v2 adds ``last_outcome``, ``progress``, ``seq`` and ``desired_error``; a v1 state has
    none of them.
    ``seq`` increases with every state the agent publishes, across restarts, so a receiver can
    drop a state delivered after a newer one.
    """

    device_id: DeviceId
    status: DeviceStatus
    active: SlotInfo | None = None
    previous: SlotInfo | None = None
    last_serial: SerialOrZero = 0
    updating_to: SlotInfo | None = None
    detail: Reason | None = None
    updated_at: Timestamp
    last_outcome: Outcome | None = None
    progress: Progress | None = None
    seq: StateSeq | None = None
    desired_error: DesiredError | None = None


class LatencySummary(WireModel):
    """Latency percentiles in milliseconds over one telemetry window."""

    p50: LatencyMs
    p95: LatencyMs
    p99: LatencyMs
    max: LatencyMs


class LatencyHistogram(WireModel):
    """Latencies (ms) of one window as a base-2 exponential histogram, in the layout of
    OpenTelemetry's exponential histogram and Prometheus native histograms (wire v2).

    Bucket ``i`` holds the latencies in ``(base**i, base**(i + 1)]`` with
    ``base = 2 ** (2 ** -scale)``; ``counts[k]`` is bucket ``offset + k``. Latencies of at most
    :data:`edgefleet.shared.histogram.ZERO_THRESHOLD_MS` count in ``zero_count``. Histograms
    merge exactly (see :mod:`edgefleet.shared.histogram`); percentiles taken from one are within
    ``(base - 1) / (base + 1)`` of the exact ones (1.1 % at the agent's scale 5).
    """

    scale: HistogramScale
    zero_count: WindowCount = 0
    offset: BucketIndex = 0
    counts: tuple[WindowCount, ...] = Field(default=(), max_length=MAX_HISTOGRAM_BUCKETS)
    count: WindowCount
    sum: LatencySumMs
    min: LatencyMs | None = None
    max: LatencyMs | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LatencyHistogram:
        try:
            check_layout(self)
        except HistogramLayoutError as e:
            raise ValueError(str(e)) from None
        return self


class ModelStats(WireModel):
    """Inference figures for one model version over one telemetry window.

    Wire v2 adds ``latency_hist``, the window's latency distribution; ``latency_ms`` is then
    derived from it. A v1 agent sends ``latency_ms`` alone.
    """

    model_id: ModelName
    version: VersionName
    requests: WindowCount
    errors: WindowCount = Field(description="model or runtime failures")
    client_errors: WindowCount = Field(default=0, description="rejected bad requests")
    latency_ms: LatencySummary | None = None
    throughput_rps: Throughput = 0.0
    latency_hist: LatencyHistogram | None = None


class SystemStats(WireModel):
    cpu_percent: Percent
    process_cpu_percent: ProcessCpuPercent = Field(description="100 per fully used CPU")
    rss_bytes: ByteCount
    mem_used_bytes: ByteCount
    mem_total_bytes: ByteCount
    temperature_c: Celsius | None = None
    disk_free_bytes: ByteCount


class Telemetry(WireModel):
    """Published every telemetry interval with QoS 0."""

    device_id: DeviceId
    window_start: Timestamp
    window_end: Timestamp
    models: tuple[ModelStats, ...] = Field(default=(), max_length=MAX_MODELS_PER_WINDOW)
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
    COMMAND_REFUSED = "command_refused"  # wire v2: unsigned, wrongly signed, expired, replayed
    ERROR = "error"


class Event(WireModel):
    """Something happened on a device. ``event_id`` makes redelivery idempotent."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    device_id: DeviceId
    type: EventType
    at: Timestamp
    model_id: ModelName | None = None
    version: VersionName | None = None
    serial: SerialOrZero | None = None
    reason: LongReason | None = None
    figures: dict[FigureName, Figure] = Field(default_factory=dict, max_length=MAX_FIGURES)


class ChunkRequest(WireModel):
    """A device asks for the chunks of an artifact it is missing."""

    device_id: DeviceId
    sha256: Sha256Hex
    indices: tuple[ChunkIndex, ...] = Field(max_length=DEFAULT_LIMITS.max_chunks)


class CommandType(StrEnum):
    ROLLBACK = "rollback"


class Command(WireModel):
    """An imperative order from the controller. Idempotent by ``command_id``.

    Wire v2 sends every command signed (:class:`SignedCommand`), with a ``serial`` above the
    last one the device accepted (replays are refused) and an ``expires_at``; a v1 command has
    neither and travels unsigned, for agents one release behind.
    """

    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    device_id: DeviceId
    type: CommandType
    reason: Reason | None = None
    issued_at: Timestamp
    serial: Serial | None = None
    expires_at: Timestamp | None = None


class SignedCommand(WireModel):
    """A command as signed JSON plus its Ed25519 signature (wire v2).

    ``command`` stays raw JSON until the signature over its canonical form has been checked;
    only :func:`edgefleet.shared.signing.verify_command` turns it into a :class:`Command`.
    """

    command: dict[str, JsonValue]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature_b64: str = Field(max_length=128)
