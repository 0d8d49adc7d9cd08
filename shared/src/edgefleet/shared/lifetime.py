"""A daemon started by another program (the demo, a test harness) may be told to end with it:
``EDGEFLEET_PARENT_PID`` names the parent, and on Linux the kernel sends the daemon SIGTERM when
that parent dies, even by SIGKILL, so it stops as on any SIGTERM (publishing its offline state).
Unset, nothing changes: a daemon started by systemd or a shell outlives them as it should."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "EDGEFLEET_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def end_with_parent(environ: dict[str, str] | None = None) -> bool:
    """Ask for SIGTERM on the parent's death when ``EDGEFLEET_PARENT_PID`` says so; True when
    asked. A parent that is already gone (the variable names another pid) gets the SIGTERM now.
    Call after the SIGTERM handler is installed."""
    value = (environ if environ is not None else os.environ).get(PARENT_PID_ENV)
    if not value or not value.isdigit() or sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return False
    if os.getppid() != int(value):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
