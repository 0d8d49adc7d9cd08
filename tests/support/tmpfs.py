"""A small real filesystem for disk-full tests: a tmpfs of a given size, mounted for a test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"2m"``, mode 0700) at ``mountpoint`` for the block.

    Skips the test, naming why, where the kernel or the user may not mount (it needs root).
    Whoever writes into it must have stopped (closed its files) when the block ends.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = result.stderr.strip() or f"exit code {result.returncode}"
        pytest.skip(f"cannot mount a tmpfs at {mountpoint} (needs root): {reason}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
