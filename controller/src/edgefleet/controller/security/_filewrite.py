"""Atomic file writes with the mode set before any byte lands (keys, passwords, bundles)."""

from __future__ import annotations

import os
from pathlib import Path

from edgefleet.controller.security.errors import WouldOverwriteError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def refuse_overwrite(paths: list[Path], *, force: bool) -> None:
    """Raise before anything is written if any of ``paths`` exists and ``force`` is off.

    Raises:
        WouldOverwriteError: the first existing path.
    """
    if force:
        return
    for path in paths:
        if path.exists():
            raise WouldOverwriteError(path)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and rename.

    A directory created for a secret file is private (0700).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode == SECRET_MODE else 0o777)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
