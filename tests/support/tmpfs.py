"""A small real filesystem for disk-full tests: a tmpfs of a given size, mounted for a test."""

from __future__ import annotations

import os
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


def fill_up(directory: Path) -> Path:
    """Write a ballast file into ``directory`` until its filesystem has no byte left."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = 1 << 20
        while size:
            try:
                if os.write(fd, b"\0" * size) < size:
                    size //= 2
            except OSError:
                size //= 2
    finally:
        os.close(fd)
    return ballast
