"""``EDGEFLEET_PARENT_PID``: a daemon told to end with its parent gets SIGTERM when that parent
dies, even by SIGKILL, or at once when the parent is already gone; unset, nothing happens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from edgefleet.shared.lifetime import PARENT_PID_ENV, end_with_parent

# The daemon: records SIGTERM in a file, then exits.
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from edgefleet.shared.lifetime import end_with_parent
    mark = Path(sys.argv[1])
    def on_term(signum, frame):
        mark.write_text("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    mark.with_suffix(".ready").write_text(str(end_with_parent()))
    time.sleep(60)
    """
)
# The parent: starts the daemon, says its pid, waits to be killed.
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    env = {**os.environ, "EDGEFLEET_PARENT_PID": str(os.getpid())}
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env)
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def wait_for(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.05)
    return path.read_text()


def test_the_daemon_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    mark = tmp_path / "child.mark"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(mark)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        assert wait_for(mark.with_suffix(".ready"), 30) == "True"
        assert not mark.exists()
        parent.kill()  # SIGKILL: the parent runs nothing more
        parent.wait(10)
        assert wait_for(mark, 5) == "SIGTERM"
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)


def test_a_parent_already_gone_means_sigterm_at_once(tmp_path: Path) -> None:
    mark = tmp_path / "child.mark"
    env = {**os.environ, PARENT_PID_ENV: "1"}  # not this daemon's parent: that one is gone
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(mark)], env=env)
    try:
        assert wait_for(mark, 30) == "SIGTERM"
        assert child.wait(10) == 0
    finally:
        child.kill()


def test_without_the_variable_nothing_is_arranged() -> None:
    assert end_with_parent({}) is False
    assert end_with_parent({PARENT_PID_ENV: "not-a-pid"}) is False
