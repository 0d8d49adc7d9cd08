"""The data dir is 0700 and private files 0600 whatever the umask; existing ones are reported."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.controller.private_files import (
    ensure_private_dir,
    ensure_private_file,
    prepare_sqlite_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_a_new_data_dir_is_0700_and_its_new_parents_0755_at_most(
    tmp_path: Path, umask: int
) -> None:
    data = ensure_private_dir(tmp_path / "a" / "b" / "data")
    assert mode(data) == 0o700
    for parent in (tmp_path / "a", tmp_path / "a" / "b"):
        assert mode(parent) == 0o755 & ~umask
    assert ensure_private_dir(data) == data  # existing: left alone


def test_a_new_private_file_is_0600(tmp_path: Path, umask: int) -> None:
    path = ensure_private_file(tmp_path / "secret")
    assert mode(path) == 0o600
    assert path.read_bytes() == b""
    path.write_bytes(b"kept")
    ensure_private_file(path)
    assert path.read_bytes() == b"kept"


def test_existing_open_files_are_reported_not_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    database = data / "controller.db"
    database.write_bytes(b"")
    os.chmod(database, 0o644)
    wal = data / "controller.db-wal"
    wal.write_bytes(b"")
    os.chmod(wal, 0o640)
    with caplog.at_level(logging.WARNING):
        ensure_private_dir(data)
        prepare_sqlite_file(database)
    assert mode(data) == 0o755
    assert mode(database) == 0o644
    assert f"{data} is open to other users (mode 0755): run 'chmod 700 {data}'" in caplog.text
    assert f"{database} is open to other users (mode 0644)" in caplog.text
    assert f"{wal} is open to other users (mode 0640)" in caplog.text


def test_a_symlink_is_never_followed_to_create_a_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "controller.db"
    link.symlink_to(target)
    ensure_private_file(link)  # exists (as a link): nothing is created through it
    assert not target.exists()
