"""The batch writer's bulk telemetry path and the shortcuts it takes, on a real SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from edgefleet.controller.fleet.tables import DeviceRow, EventRow, SystemSampleRow, TelemetryRow
from edgefleet.controller.fleet.writer import write_batch
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared import (
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    LatencySummary,
    ModelStats,
    SlotInfo,
    SystemStats,
    Telemetry,
)

NOW = datetime.now(UTC)
SHA = "ef" * 32


def telemetry(device_id: str, p95: float, seconds: int = 0) -> Telemetry:
    end = NOW + timedelta(seconds=seconds)
    return Telemetry(
        device_id=device_id,
        window_start=end - timedelta(seconds=10),
        window_end=end,
        models=(
            ModelStats(
                model_id="m",
                version="1",
                requests=5,
                errors=0,
                latency_ms=LatencySummary(p50=1.0, p95=p95, p99=p95, max=p95),
            ),
        ),
        system=SystemStats(
            cpu_percent=1.0,
            process_cpu_percent=1.0,
            rss_bytes=1,
            mem_used_bytes=1,
            mem_total_bytes=2,
            disk_free_bytes=1,
        ),
    )


def state(device_id: str, status: DeviceStatus, serial: int = 1) -> DeviceState:
    slot = SlotInfo(model_id="m", version="1", serial=serial, sha256=SHA, target="onnx-int8")
    active = None if status is DeviceStatus.OFFLINE else slot
    return DeviceState(
        device_id=device_id, status=status, active=active, last_serial=serial, updated_at=NOW
    )


def test_telemetry_is_inserted_in_bulk_and_updates_each_device_once(sessions):
    with sessions.begin() as session:
        write_batch(session, [telemetry("new", 1.0), telemetry("new", 2.0, 10)])
    with sessions() as session:
        device = session.get(DeviceRow, "new")  # telemetry before any hello creates the device
        assert device.status == "unknown"
        assert not device.online  # online once it says hello or publishes its state
        assert device.last_telemetry["models"][0]["latency_ms"]["p95"] == 2.0  # the latest
        assert session.scalar(select(func.count()).select_from(TelemetryRow)) == 2
        assert session.scalar(select(func.count()).select_from(SystemSampleRow)) == 2


def test_telemetry_written_after_a_last_will_does_not_bring_the_device_back(sessions):
    """Ingest writes a batch's states before its telemetry: a window the device sent just
    before its will can land after it, and must not make a device that is gone look online."""
    with sessions.begin() as session:
        write_batch(session, [state("pi", DeviceStatus.SERVING)])
    with sessions.begin() as session:
        write_batch(session, [state("pi", DeviceStatus.OFFLINE)])
    with sessions() as session:
        assert session.get(DeviceRow, "pi").status == "offline"
    with sessions.begin() as session:
        write_batch(session, [telemetry("pi", 3.0)])
    with sessions() as session:
        device = session.get(DeviceRow, "pi")
        assert device.status == "offline"
        assert not device.online
        assert device.active is not None  # the last will kept its active slot
        assert device.last_telemetry is not None


def test_state_is_recorded_for_the_engine_and_events_are_idempotent(sessions):
    """The writer records what the device reports; deriving the rollout row is the engine's job
    (tests/unit/controller/rollouts), so a state changes no rollout row here."""
    with sessions.begin() as session:
        write_batch(session, [state("pi", DeviceStatus.SERVING, serial=1)])
        rollout = RolloutRow(model="m", version="2", selector="*", waves=[1], wave_spec="1",
                             policy={}, status="running")  # fmt: skip
        session.add(rollout)
        session.flush()
        session.add(RolloutDeviceRow(rollout_id=rollout.id, device_id="pi", wave=0, state="sent",
                                     sha256=SHA, serial=2))  # fmt: skip
    event = Event(device_id="pi", type=EventType.SWAPPED, at=NOW, serial=2)
    with sessions.begin() as session:
        write_batch(session, [event, state("pi", DeviceStatus.SERVING, serial=2), event])
    with sessions.begin() as session:
        write_batch(session, [event, telemetry("pi", 1.0)])
    with sessions() as session:
        target = session.scalars(select(RolloutDeviceRow)).one()
        assert target.state == "sent"
        device = session.get(DeviceRow, "pi")
        assert device.active["serial"] == 2
        assert device.reported_last_serial == 2
        assert session.scalar(select(func.count()).select_from(EventRow)) == 1
