"""The controller's private files: its data dir (0700) and the SQLite database (0600, which
SQLite passes on to the -wal, -shm and -journal files it makes beside it), whatever the umask.

Existing ones that others can read are reported in the log, not changed: an operator may have
opened them on purpose (a backup group, say).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PARENT_DIR_MODE = 0o755  # at most: missing parents are nobody's secret, but nobody else's to fill
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (missing parents 0755 at most), or warn when the existing
    one is open to others.

    Raises:
        OSError: the directory cannot be created.
    """
    if path.is_dir():
        warn_if_open(path)
        return path
    missing = [parent for parent in path.parents if not parent.exists()]
    for parent in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            parent.mkdir(mode=PARENT_DIR_MODE)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        warn_if_open(path)  # made meanwhile by another process
        return path
    os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken more than group and other bits
    return path


def ensure_private_file(path: Path) -> Path:
    """Create an empty ``path`` with mode 0600 unless it exists (then warn if it is open).

    Raises:
        OSError: the file cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    except FileExistsError:
        warn_if_open(path)
        return path
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return path


def prepare_sqlite_file(database: Path) -> None:
    """Before SQLite opens ``database``: its directory (0700 when created here) and the file
    (0600 when created here); existing ones, and the side files, are checked.

    Raises:
        OSError: the directory or the file cannot be created.
    """
    if not database.parent.exists():
        ensure_private_dir(database.parent)
    ensure_private_file(database)
    for suffix in SQLITE_SIDE_SUFFIXES:
        side = database.with_name(database.name + suffix)
        if side.exists():
            warn_if_open(side)


def open_to_others(path: Path) -> int:
    """The group and other permission bits of ``path`` (0 when it is private)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077


def warn_if_open(path: Path) -> None:
    """Log a warning (with the fix) when others may read or enter ``path``."""
    try:
        bits = open_to_others(path)
    except OSError:
        return
    if bits:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = PRIVATE_DIR_MODE if path.is_dir() else PRIVATE_FILE_MODE
        log.warning(
            "%s is open to other users (mode %04o): run 'chmod %o %s' unless that is meant",
            path,
            mode,
            wanted,
            path,
        )
