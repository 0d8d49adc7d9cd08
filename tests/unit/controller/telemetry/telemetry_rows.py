"""Writing raw telemetry rows for history and series tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from edgefleet.controller.fleet.tables import SystemSampleRow, TelemetryRow


def add_window(
    session: Session,
    device_id: str,
    end: datetime,
    *,
    p95: float,
    requests: int = 10,
    version: str = "1",
    cpu: float = 50.0,
    temperature: float | None = 40.0,
) -> None:
    session.add(
        TelemetryRow(
            device_id=device_id, window_start=end - timedelta(seconds=10), window_end=end,
            model_id="m", version=version, requests=requests, errors=1, p50_ms=p95 / 2,
            p95_ms=p95, p99_ms=p95 * 2, max_ms=p95 * 3, throughput_rps=1.0,
        )
    )  # fmt: skip
    session.add(
        SystemSampleRow(
            device_id=device_id, window_end=end, cpu_percent=cpu, process_cpu_percent=1.0,
            rss_bytes=100, mem_used_bytes=1000, mem_total_bytes=4000, temperature_c=temperature,
            disk_free_bytes=1,
        )
    )  # fmt: skip
