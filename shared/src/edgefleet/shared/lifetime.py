"""A daemon started by another program (the demo, a test harness) may be told to end with it:
``EDGEFLEET_PARENT_PID`` names the parent, and on Linux the kernel sends the daemon SIGTERM when
that parent dies, even by SIGKILL, so it stops as on any SIGTERM (publishing its offline state).
Unset, nothing changes: a daemon started by systemd or a shell outlives them as it should."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_PID_ENV = "EDGEFLEET_PARENT_PID"
_PR_SET_PDEATHSIG = 1
WATCH_S = 0.5


def end_with_parent(environ: dict[str, str] | None = None) -> bool:
    """Arrange for SIGTERM on the parent's death when ``EDGEFLEET_PARENT_PID`` says so (the
    kernel's parent-death signal, and a thread that checks the parent every ``WATCH_S``); True
    when arranged. A parent already gone (the variable names another pid) means SIGTERM at once.
    Call after the SIGTERM handler is installed."""
    value = (environ if environ is not None else os.environ).get(PARENT_PID_ENV)
    if not value or not value.isdigit():
        return False
    parent = int(value)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # and a watch of our own: the kernel's signal was seen not to arrive at one of four agents
    # of a SIGKILLed demo
    threading.Thread(
        target=_watch, args=(parent,), name="edgefleet-parent-watch", daemon=True
    ).start()
    return True


def _watch(parent: int) -> None:
    while os.getppid() == parent:  # a dead parent's children are adopted by another process
        time.sleep(WATCH_S)
    os.kill(os.getpid(), signal.SIGTERM)
