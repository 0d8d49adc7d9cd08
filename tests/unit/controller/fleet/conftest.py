"""Fixtures for the fleet tests: a real database (SQLite and PostgreSQL) at the schema head."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory

Database = tuple[Engine, sessionmaker[Session]]


def _impatient(dbapi_connection: object, _record: object) -> None:
    # After the controller's own pragmas: a locked database fails within 50 ms instead of 5 s.
    dbapi_connection.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The schema at head, on an engine that gives up on a lock at once (SQLite's busy timeout,
    PostgreSQL's lock_timeout), so a held lock shows as the error it is."""
    if database_url.startswith("sqlite"):
        engine = create_engine_for(database_url)
        event.listen(engine, "connect", _impatient)
    else:
        engine = create_engine_for(database_url, connect_args={"options": "-c lock_timeout=100"})
    create_schema(engine)
    yield engine, session_factory(engine)
    engine.dispose()
