"""System figures for telemetry: CPU, memory, temperature, disk free of the data dir."""

from __future__ import annotations

import logging
from pathlib import Path

import psutil

from edgefleet.agent import measured
from edgefleet.shared.messages import SystemStats

log = logging.getLogger(__name__)
_THERMAL = Path("/sys/class/thermal")


def read_temperature() -> float | None:
    """The hottest CPU/SoC sensor in °C, from psutil or /sys/class/thermal; None if neither."""
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is not None:
        try:
            readings = [t.current for entries in sensors().values() for t in entries]
        except (OSError, RuntimeError):
            readings = []
        if readings:
            return float(max(readings))
    values = []
    for zone in _THERMAL.glob("thermal_zone*/temp"):
        try:
            values.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(values) if values else None


class SystemSampler:
    """Samples system figures; CPU percentages cover the time since the previous sample."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def sample(self) -> SystemStats:
        memory = psutil.virtual_memory()
        return SystemStats(
            cpu_percent=measured.percent(psutil.cpu_percent(None)),
            process_cpu_percent=measured.process_percent(self._process.cpu_percent(None)),
            rss_bytes=self._process.memory_info().rss,
            mem_used_bytes=memory.total - memory.available,
            mem_total_bytes=memory.total,
            temperature_c=measured.celsius(read_temperature()),
            disk_free_bytes=psutil.disk_usage(str(self.data_dir)).free,
        )
