"""API schemas (request and response bodies), apart from wire models and database tables."""

from __future__ import annotations

import re
from datetime import MINYEAR, UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from edgefleet.controller.registry.db import aware
from edgefleet.controller.rollouts.gates import GatePolicy, LatencyBudget

# SQLite hands datetimes back naive (they are stored in UTC): every time the API shows says so.
UtcDatetime = Annotated[datetime, AfterValidator(aware)]


def as_utc(moment: datetime) -> datetime:
    """A time a request gives, in UTC (naive: taken as UTC). A time whose UTC falls outside the
    years 1-9999 becomes the first or last representable instant: before or after everything."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if moment.year == MINYEAR else datetime.max
        return edge.replace(tzinfo=UTC)


# RFC 3339, what the schema's ``date-time`` format means (pydantic alone would also take a
# Unix time or a bare date).
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)


def rfc3339(value: object) -> object:
    """Refuse a string that is not an RFC 3339 date-time (with its offset)."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("not an RFC 3339 time with an offset, such as 2026-01-31T08:00:00Z")
    return value


# Compared with columns stored in UTC (SQLite keeps no offset), so converted first.
UtcQueryTime = Annotated[datetime, BeforeValidator(rfc3339), AfterValidator(as_utc)]

# --- formats the schema states, each enforced by the same pattern --------------------------------
# Each pattern accepts a subset of what the code behind it parses (tested), so a request the
# schema calls valid is never refused for a reason the schema does not state.

# What ``edgefleet.shared.bounds.Text`` refuses and a pattern can say: NUL (PostgreSQL TEXT).
NO_NUL_PATTERN = r"^[^\x00]*$"
# ``edgefleet.shared.topics`` device ids.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# ``edgefleet.controller.fleet.selectors``: ``*``, or comma-separated ``key=value``/``key!=value``.
_SELECTOR_WORD = r"[A-Za-z0-9_./-]"
_SELECTOR_TERM = rf"{_SELECTOR_WORD}+ *!?= *{_SELECTOR_WORD}*"
SELECTOR_PATTERN = rf"^ *(?:\*|{_SELECTOR_TERM}(?: *, *{_SELECTOR_TERM})*)? *$"
SELECTOR_DESCRIPTION = (
    "Label selector: comma-separated `key=value` or `key!=value` terms, all of which must hold; "
    "`*` or an empty string selects every device. Keys are device labels or the facts `id`, "
    "`arch`, `runtime` and `accel`; keys and values use letters, digits and `_ . / -`."
)
# ``edgefleet.controller.rollouts.waves``: a count >= 1 or a percentage in (0, 100].
_WAVE = r"(?:[1-9][0-9]{0,8}|(?:100(?:\.0+)?|[1-9][0-9]?(?:\.[0-9]+)?|0?\.[0-9]*[1-9][0-9]*)%)"
WAVES_PATTERN = rf"^ *{_WAVE}(?: *, *{_WAVE})* *$"
# ``edgefleet.controller.rollouts.gates.failures_allowed``: a count >= 0 or a percentage
# in [0, 100].
MAX_FAILURES_PATTERN = (
    r"^(?:[0-9]{1,9}|(?:100(?:\.0{1,6})?|[0-9]{1,2}(?:\.[0-9]{1,6})?|\.[0-9]{1,6})%)$"
)

# The lengths of ``edgefleet.shared.bounds`` ModelName, VersionName and Reason, NUL refused.
ModelNameIn = Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL_PATTERN)]
VersionNameIn = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL_PATTERN)]
ReasonIn = Annotated[str, Field(max_length=1024, pattern=NO_NUL_PATTERN)]
Selector = Annotated[
    str,
    Field(max_length=512, pattern=SELECTOR_PATTERN, description=SELECTOR_DESCRIPTION),
]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="the device's id")]
# Optional filters of the read routes.
DeviceIdQuery = Annotated[
    str | None, Query(pattern=DEVICE_ID_PATTERN, description="only this device")
]
ModelIdQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=128, pattern=NO_NUL_PATTERN, description="only this model"),
]

MAX_ROLLOUT_ID = 2**31 - 1  # rollouts.id is a 32-bit INTEGER column on PostgreSQL


class ValidationProblem(BaseModel):
    """One field of a request that failed validation."""

    where: str = Field(description="where in the request, e.g. `body.policy.max_failures`")
    message: str
    type: str = Field(description="the kind of failure, e.g. `string_pattern_mismatch`")


class ErrorBody(BaseModel):
    """What every error response carries: the reason for a person, a stable name for a program."""

    detail: str = Field(description="why the request failed, in words")
    error: str = Field(
        description="a stable name for the failure, e.g. `RolloutNotFoundError` or `Unauthorized`"
    )
    problems: list[ValidationProblem] | None = Field(
        default=None, description="request validation failures (422): each field that failed"
    )


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


class LatencyHistogramPublic(BaseModel):
    """Latencies (ms) as a base-2 exponential histogram (OpenTelemetry's layout): bucket
    ``offset + k`` holds ``counts[k]`` latencies in ``(base**i, base**(i + 1)]``, with
    ``base = 2 ** (2 ** -scale)``; ``zero_count`` those of at most 1 us."""

    model_config = ConfigDict(from_attributes=True)

    scale: int
    zero_count: int
    offset: int
    counts: list[int]
    count: int
    sum: float
    min: float | None
    max: float | None


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
    latency_hist: LatencyHistogramPublic | None = Field(
        default=None, description="the window's latency histogram; none from a v1 agent"
    )


class LatencyBudgetIn(LatencyBudget):
    """A latency budget as a request states it: its selector's format in the schema."""

    model_config = ConfigDict(extra="forbid")

    selector: str = Field(
        min_length=1,
        max_length=256,
        pattern=SELECTOR_PATTERN,
        description=SELECTOR_DESCRIPTION,
        examples=["board=pi4"],
    )


class RolloutPolicy(GatePolicy):
    """The gate policy as a request states it: :class:`GatePolicy` with every format and bound
    it checks written into the schema, and bounds on the figures it leaves open."""

    model_config = ConfigDict(extra="forbid")

    max_failures: str = Field(
        default="0",
        max_length=16,
        pattern=MAX_FAILURES_PATTERN,
        description="failed devices allowed per wave: a count (`3`) or a percentage (`10%`)",
        examples=["0", "2", "10%"],
    )
    max_p95_regression: float = Field(
        default=0.2, ge=0.0, le=1000.0, allow_inf_nan=False, description="0.2: p95 may rise 20%"
    )
    min_p95_regression_ms: float = Field(
        default=1.0,
        ge=0.0,
        le=1e7,
        allow_inf_nan=False,
        description="a p95 rise breaches only when it is also more than this many ms",
    )
    soak_s: float = Field(
        default=60.0, ge=0.0, le=30 * 24 * 3600, allow_inf_nan=False, description="soak per wave"
    )
    min_requests: int = Field(
        default=20,
        ge=0,
        le=1_000_000_000,
        description="requests needed on each side (new, previous) to judge latency",
    )
    latency_budgets: tuple[LatencyBudgetIn, ...] = Field(
        default=(),
        max_length=64,
        description="operator budgets per device class; the first whose selector matches wins",
    )


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelNameIn
    version: VersionNameIn
    selector: Selector = "*"
    waves: str = Field(
        default="1,10%,50%,100%",
        max_length=128,
        pattern=WAVES_PATTERN,
        description=(
            "cumulative waves, canary first: counts (`1`) or percentages of the matched devices "
            "(`10%`); a last wave of every device is added when the plan stops short"
        ),
        examples=["1,10%,50%,100%", "2,100%"],
    )
    policy: RolloutPolicy = RolloutPolicy()


class RolloutAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: ReasonIn | None = None


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
