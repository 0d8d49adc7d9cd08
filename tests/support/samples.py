"""One valid instance of every wire message, for round-trip and fuzz tests."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.shared import (
    ArtifactRef,
    ChunkRequest,
    Command,
    CommandType,
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    GoldenPair,
    GoldenSet,
    Hardware,
    Hello,
    IOSignature,
    LatencySummary,
    Manifest,
    ModelStats,
    RuntimeInfo,
    SlotInfo,
    SystemStats,
    Telemetry,
    TensorData,
    TensorSpec,
    WireModel,
    sign_command,
    sign_manifest,
)
from edgefleet.shared.histogram import Histogram
from edgefleet.shared.messages import LatencyHistogram

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
SHA_A = hashlib.sha256(b"a").hexdigest()


def float_tensor(values: list[float], shape: tuple[int, ...]) -> TensorData:
    return TensorData.from_raw("float32", shape, struct.pack(f"<{len(values)}f", *values))


def make_manifest(
    *,
    device_id: str = "pi-001",
    serial: int = 1,
    created_at: datetime = NOW,
    ttl: timedelta = timedelta(days=7),
    data: bytes = b"x" * 1000,
    chunk_size: int = 256,
) -> Manifest:
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    return Manifest(
        device_id=device_id,
        model_id="digits",
        version="1.2.0",
        serial=serial,
        target="onnx-int8",
        runtime="onnxruntime",
        artifact=ArtifactRef(
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            chunk_size=chunk_size,
            chunk_sha256=tuple(hashlib.sha256(c).hexdigest() for c in chunks),
            mqtt_topic=f"edgefleet/v1/artifacts/{hashlib.sha256(data).hexdigest()}/chunks",
            http_url="http://127.0.0.1:8080/artifacts/x",
        ),
        signature=IOSignature(
            inputs=(TensorSpec(name="x", dtype="float32", shape=(None, 4)),),
            outputs=(TensorSpec(name="y", dtype="float32", shape=(None, 2)),),
        ),
        golden=GoldenSet(
            pairs=(
                GoldenPair(
                    inputs={"x": float_tensor([0.5, -1.0, 2.25, 3.0], (1, 4))},
                    outputs={"y": float_tensor([0.1, 0.9], (1, 2))},
                ),
            ),
            compare="top1",
        ),
        latency_budget_ms=25.0,
        created_at=created_at,
        expires_at=created_at + ttl,
    )


def sample_messages(key: Ed25519PrivateKey) -> list[WireModel]:
    """One instance of every message kind, with optional fields filled in."""
    slot = SlotInfo(model_id="digits", version="1.2.0", serial=3, sha256=SHA_A, target="onnx-int8")
    return [
        Hello(
            device_id="pi-001",
            agent_version="0.1.0",
            hardware=Hardware(arch="aarch64", cpu_count=4, ram_bytes=4 << 30, os="Linux"),
            runtimes=(RuntimeInfo(name="onnxruntime", version="1.20.1"),),
            accelerators=("edgetpu",),
            labels={"site": "plant-3"},
            started_at=NOW,
        ),
        DeviceState(
            device_id="pi-001",
            status=DeviceStatus.SERVING,
            active=slot,
            previous=slot.model_copy(update={"version": "1.1.0", "serial": 2}),
            last_serial=3,
            updated_at=NOW,
        ),
        Telemetry(
            device_id="pi-001",
            window_start=NOW,
            window_end=NOW + timedelta(seconds=10),
            models=(
                ModelStats(
                    model_id="digits",
                    version="1.2.0",
                    requests=120,
                    errors=1,
                    client_errors=2,
                    latency_ms=LatencySummary(p50=1.5, p95=3.25, p99=4.0, max=9.5),
                    throughput_rps=12.0,
                ),
            ),
            system=SystemStats(
                cpu_percent=12.5,
                process_cpu_percent=3.0,
                rss_bytes=70 << 20,
                mem_used_bytes=1 << 30,
                mem_total_bytes=4 << 30,
                temperature_c=51.2,
                disk_free_bytes=10 << 30,
            ),
        ),
        Event(
            device_id="pi-001",
            type=EventType.VALIDATION_FAILED,
            at=NOW,
            model_id="digits",
            version="1.2.0",
            serial=4,
            reason="golden output mismatch: max abs error 0.8 > atol 0.001",
            figures={"max_abs_error": 0.8},
        ),
        ChunkRequest(device_id="pi-001", sha256=SHA_A, indices=(0, 5, 7)),
        Command(device_id="pi-001", type=CommandType.ROLLBACK, reason="gate", issued_at=NOW),
        sign_manifest(make_manifest(), key),
        sign_command(
            Command(
                device_id="pi-001",
                type=CommandType.ROLLBACK,
                reason="operator",
                issued_at=NOW,
                serial=3,
                expires_at=NOW + timedelta(minutes=10),
            ),
            key,
        ),
    ]


# --- what a device sends, for simulators (tests and benchmarks) ------------------------------

SIM_HARDWARE = Hardware(arch="aarch64", cpu_count=4, ram_bytes=4 << 30, os="Linux")
SIM_SYSTEM = SystemStats(
    cpu_percent=35.0,
    process_cpu_percent=5.0,
    rss_bytes=80 << 20,
    mem_used_bytes=1 << 30,
    mem_total_bytes=4 << 30,
    temperature_c=48.5,
    disk_free_bytes=8 << 30,
)


def device_hello(
    device_id: str,
    *,
    labels: dict[str, str] | None = None,
    runtimes: tuple[str, ...] = ("onnxruntime",),
    started_at: datetime | None = None,
) -> Hello:
    return Hello(
        device_id=device_id,
        agent_version="0.1.0",
        hardware=SIM_HARDWARE,
        runtimes=tuple(RuntimeInfo(name=r, version="1.20.1") for r in runtimes),  # type: ignore[arg-type]
        labels=labels or {},
        started_at=started_at or datetime.now(UTC),
    )


def device_state(
    device_id: str,
    *,
    status: DeviceStatus = DeviceStatus.SERVING,
    active: SlotInfo | None = None,
    at: datetime | None = None,
) -> DeviceState:
    """A device's state; ``active=None`` with a non-serving status for an empty device."""
    return DeviceState(
        device_id=device_id,
        status=status,
        active=active,
        last_serial=active.serial if active else 0,
        updated_at=at or datetime.now(UTC),
    )


def slot(
    version: str = "1", serial: int = 1, *, sha256: str = SHA_A, model_id: str = "tiny"
) -> SlotInfo:
    return SlotInfo(
        model_id=model_id, version=version, serial=serial, sha256=sha256, target="onnx-int8"
    )


def device_telemetry(
    device_id: str,
    p95: float,
    *,
    version: str = "1",
    requests: int = 50,
    end: datetime | None = None,
    histogram: bool = False,
) -> Telemetry:
    """One 1 s window of one model version's figures, with plausible system figures; with
    ``histogram``, also the latency histogram a v2 agent sends (of latencies whose percentiles
    are the summary's)."""
    end = end or datetime.now(UTC)
    hist = None
    if histogram and requests:
        p50, p99, top = p95 / 2, p95 * 1.2, p95 * 2
        values = [
            p50 if i < 0.5 * requests else p95 if i < 0.95 * requests else p99
            for i in range(1, requests)
        ]
        hist = LatencyHistogram.model_validate(Histogram.of_values([*values, top]).wire_fields())
    return Telemetry(
        device_id=device_id,
        window_start=end - timedelta(seconds=1),
        window_end=end,
        models=(
            ModelStats(
                model_id="tiny",
                version=version,
                requests=requests,
                errors=0,
                latency_ms=LatencySummary(p50=p95 / 2, p95=p95, p99=p95 * 1.2, max=p95 * 2),
                throughput_rps=float(requests),
                latency_hist=hist,
            ),
        ),
        system=SIM_SYSTEM,
    )
