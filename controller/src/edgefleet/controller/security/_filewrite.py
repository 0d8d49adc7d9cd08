"""Atomic file writes with the mode set before any byte lands (keys, passwords, bundles)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.controller.security.errors import WouldOverwriteError
from edgefleet.shared.signing import write_file_atomic

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
    """Write ``data`` to ``path`` atomically, mode set first (see the shared helper)."""
    write_file_atomic(path, data, mode)
