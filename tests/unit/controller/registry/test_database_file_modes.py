"""A SQLite database the controller creates is 0600, and so are the -wal and -shm files SQLite
makes beside it, whatever the umask; so is the directory it had to create (0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from edgefleet.controller.registry.db import create_engine_for, create_schema


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_sqlite_files_are_private(tmp_path: Path, umask: int) -> None:
    database = tmp_path / "new-dir" / "controller.db"
    previous = os.umask(umask)
    try:
        engine = create_engine_for(f"sqlite:///{database}")
        create_schema(engine)
        with engine.connect() as connection:  # WAL mode: the -wal and -shm files exist now
            connection.execute(text("SELECT count(*) FROM models")).scalar_one()
            modes = {
                path.name: stat.S_IMODE(path.stat().st_mode) for path in database.parent.iterdir()
            }
        engine.dispose()
    finally:
        os.umask(previous)
    assert modes == {"controller.db": 0o600, "controller.db-wal": 0o600, "controller.db-shm": 0o600}
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700


def test_memory_and_uri_databases_are_left_to_sqlite(tmp_path: Path) -> None:
    create_engine_for("sqlite://").dispose()
    create_engine_for("sqlite:///:memory:").dispose()
    uri = tmp_path / "uri.db"
    create_engine_for(f"sqlite:///file:{uri}?mode=rwc&uri=true").dispose()
    assert list(tmp_path.iterdir()) == []  # nothing made before SQLite opens it
