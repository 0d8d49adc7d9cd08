"""Keeping the daemon light on small devices: glibc malloc tuning and background priority.

Each thread that allocates may get its own malloc arena, and freed memory (an old model, a
validation run) stays mapped until trimmed; on a Pi those megabytes matter. Background work
(loading and validating a model) runs at a lower CPU priority than serving.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

log = logging.getLogger(__name__)
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc malloc arenas for this process (call before starting threads)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (after a swap released the old model)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def lower_thread_priority(niceness: int = 10) -> bool:
    """Make the calling thread (only it, on Linux) yield the CPU to request-serving threads."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (OSError, AttributeError):
        return False
    return True
