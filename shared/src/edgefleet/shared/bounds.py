"""Every bound of a wire field, once, as a named pydantic type: range, finiteness, length.

A value that passed one of these types can be stored (signed 64-bit and 32-bit integer columns,
TEXT in SQLite and PostgreSQL) and rendered (JSON without NaN, charts) anywhere without another
check. Ranges are what the stores hold, narrowed to what is physically sane.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field
from pydantic_core import PydanticCustomError

from edgefleet.shared.limits import DEFAULT_LIMITS

# --- integers ------------------------------------------------------------------------------

# Exact in a JSON number (an IEEE double) and in a signed 64-bit column.
EXACT_INT = 2**53
MAX_SERIAL = EXACT_INT
MAX_SEQ = 2**63 - 1  # a signed 64-bit column; a sequence number is only compared
MAX_BYTES = EXACT_INT  # 8 PiB: any disk, memory or download size
MAX_CPUS = 4096  # far beyond any edge device; the column is a 32-bit INTEGER
MAX_WINDOW_COUNT = 2**31 - 1  # telemetry counters land in 32-bit INTEGER columns
MAX_RETRIES = 1_000_000
MAX_TENSOR_DIM = 2**31 - 1  # ONNX and TFLite dimensions are int32/int64; no tensor is larger
# Exponential histograms (OpenTelemetry's layout): the scales OpenTelemetry admits, bucket
# indexes a signed 32-bit integer holds, and enough buckets for every latency the wire admits at
# the agent's scale (5: 1 us to 2.8 hours is 1,064 buckets).
MIN_HISTOGRAM_SCALE, MAX_HISTOGRAM_SCALE = -10, 20
MAX_BUCKET_INDEX = 2**31 - 1
MAX_HISTOGRAM_BUCKETS = 1100

Serial = Annotated[int, Field(ge=1, le=MAX_SERIAL)]
HistogramScale = Annotated[int, Field(ge=MIN_HISTOGRAM_SCALE, le=MAX_HISTOGRAM_SCALE)]
BucketIndex = Annotated[int, Field(ge=-MAX_BUCKET_INDEX, le=MAX_BUCKET_INDEX)]
SerialOrZero = Annotated[int, Field(ge=0, le=MAX_SERIAL)]  # 0: nothing accepted yet
StateSeq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
ByteCount = Annotated[int, Field(ge=0, le=MAX_BYTES)]
CpuCount = Annotated[int, Field(ge=1, le=MAX_CPUS)]
WindowCount = Annotated[int, Field(ge=0, le=MAX_WINDOW_COUNT)]
RetryCount = Annotated[int, Field(ge=0, le=MAX_RETRIES)]
ChunkIndex = Annotated[int, Field(ge=0, lt=DEFAULT_LIMITS.max_chunks)]
ChunkCount = Annotated[int, Field(ge=1, le=DEFAULT_LIMITS.max_chunks)]
TensorDim = Annotated[int, Field(ge=0, le=MAX_TENSOR_DIM)]

# --- floats: always finite (also the default of every wire model) ----------------------------

MAX_LATENCY_MS = 1e7  # 2.8 hours: any request slower than that is a stuck clock, not a latency
MAX_PERCENT = 100.0
MAX_PROCESS_CPU_PERCENT = MAX_PERCENT * MAX_CPUS  # one process may use every CPU
MIN_CELSIUS, MAX_CELSIUS = -100.0, 250.0  # beyond what silicon survives, short of bogus sensors
MAX_THROUGHPUT_RPS = 1e9
MAX_FIGURE = float(EXACT_INT)  # a figure may carry any serial or byte count exactly
MAX_LATENCY_SUM_MS = MAX_LATENCY_MS * MAX_WINDOW_COUNT  # every request of a window at the maximum

LatencyMs = Annotated[float, Field(ge=0.0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
LatencySumMs = Annotated[float, Field(ge=0.0, le=MAX_LATENCY_SUM_MS, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0.0, le=MAX_PERCENT, allow_inf_nan=False)]
ProcessCpuPercent = Annotated[float, Field(ge=0.0, le=MAX_PROCESS_CPU_PERCENT, allow_inf_nan=False)]
Celsius = Annotated[float, Field(ge=MIN_CELSIUS, le=MAX_CELSIUS, allow_inf_nan=False)]
Throughput = Annotated[float, Field(ge=0.0, le=MAX_THROUGHPUT_RPS, allow_inf_nan=False)]
Figure = Annotated[float, Field(ge=-MAX_FIGURE, le=MAX_FIGURE, allow_inf_nan=False)]

# --- strings: bounded length, and storable in every column (no NUL, no lone surrogate) -------


def _storable(value: str) -> str:
    # PostgreSQL TEXT refuses NUL; a lone surrogate (from a "\\ud800" escape) cannot be encoded
    # as UTF-8, so neither the database nor a page could take it.
    if "\x00" in value:
        raise PydanticCustomError("string_unstorable", "String should not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_unstorable", "String should not contain a lone surrogate"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_storable)]
ArchName = Annotated[Text, Field(max_length=32)]
TargetName = Annotated[Text, Field(max_length=32)]
VersionName = Annotated[Text, Field(max_length=64)]
ModelName = Annotated[Text, Field(max_length=128)]
OsName = Annotated[Text, Field(max_length=128)]
LabelKey = Annotated[Text, Field(max_length=64)]
LabelValue = Annotated[Text, Field(max_length=256)]
FigureName = Annotated[Text, Field(max_length=64)]
ErrorText = Annotated[Text, Field(max_length=512)]
Reason = Annotated[Text, Field(max_length=1024)]
LongReason = Annotated[Text, Field(max_length=2048)]

# --- timestamps: in an era every store, page and clock conversion handles -------------------

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# How far ahead of the receiver's clock a device's timestamp may be before it counts as skewed
# (see :mod:`edgefleet.shared.clock`): NTP-less boards drift, but not by more than minutes.
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)


def _in_era(value: datetime) -> datetime:
    # Compared before any conversion: 9999-12-31T23:59-01:00 has no UTC datetime to convert to.
    if not EARLIEST <= value <= LATEST:
        raise PydanticCustomError(
            "timestamp_range",
            "Timestamp should lie between {earliest} and {latest}",
            {"earliest": EARLIEST.isoformat(), "latest": LATEST.isoformat()},
        )
    return value.astimezone(UTC)


Timestamp = Annotated[AwareDatetime, AfterValidator(_in_era)]  # normalized to UTC

# --- collections -----------------------------------------------------------------------------

MAX_LABELS = 64
MAX_FIGURES = 64
MAX_RUNTIMES = 16
MAX_MODELS_PER_WINDOW = 64
