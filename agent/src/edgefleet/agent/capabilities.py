"""What this device is and can run, measured once at start for the hello message."""

from __future__ import annotations

import os
import platform
from collections.abc import Collection
from datetime import UTC, datetime

import psutil

from edgefleet.agent import __version__
from edgefleet.agent.runtimes import available_runtimes
from edgefleet.agent.runtimes.edgetpu import edgetpu_library_present
from edgefleet.shared.messages import AcceleratorName, Hardware, Hello, RuntimeInfo, RuntimeName

_RUNTIME_NAMES: tuple[RuntimeName, ...] = ("onnxruntime", "litert", "tflite_runtime")


def measure_hello(
    device_id: str, labels: dict[str, str], allowed: Collection[str] | None = None
) -> Hello:
    """The hello message: hardware, importable runtimes with versions, accelerators.

    ``allowed`` narrows the runtimes offered (an operator keeping a device on one runtime).
    """
    runtimes = {
        name: version
        for name, version in available_runtimes().items()
        if allowed is None or name in allowed
    }
    accelerators: tuple[AcceleratorName, ...] = ("edgetpu",) if edgetpu_library_present() else ()
    return Hello(
        device_id=device_id,
        agent_version=__version__,
        hardware=Hardware(
            arch=platform.machine()[:32] or "unknown",
            cpu_count=os.cpu_count() or 1,
            ram_bytes=psutil.virtual_memory().total,
            os=f"{platform.system()} {platform.release()}"[:128],
        ),
        runtimes=tuple(
            RuntimeInfo(name=name, version=runtimes[name][:64])
            for name in _RUNTIME_NAMES
            if name in runtimes
        ),
        accelerators=accelerators,
        labels=labels,
        started_at=datetime.now(UTC),
    )
