"""What the batch writer takes for a transient failure of the database (write again later) and
what for a refusal of the values (isolate and dead-letter), on real errors of real databases."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from edgefleet.controller.fleet.writer import is_transient


def error_of(engine, failing: str, *setup: str) -> DBAPIError:
    """The error ``failing`` raises once ``setup`` has run."""
    with engine.begin() as connection:
        for statement in setup:
            connection.execute(text(statement))
    with engine.connect() as connection, pytest.raises(DBAPIError) as caught:
        connection.execute(text(failing))
    return caught.value


def test_refused_values_are_not_transient(database) -> None:
    engine, _ = database
    duplicate = error_of(
        engine,
        "INSERT INTO pairs VALUES (1)",
        "CREATE TABLE pairs (k INTEGER PRIMARY KEY)",
        "INSERT INTO pairs VALUES (1)",
    )
    assert not is_transient(duplicate)


# PostgreSQL error classes: SQLite has no such errors (its locked database is covered by the
# ingest tests), so these run on PostgreSQL alone rather than skip on SQLite.
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_a_postgresql_program_limit_is_the_values_fault(database) -> None:
    engine, _ = database
    too_large = error_of(
        engine,
        # Incompressible, so the index row is larger than a btree page allows (SQLSTATE 54000).
        "INSERT INTO keyed SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400)",
        "CREATE TABLE keyed (v TEXT)",
        "CREATE INDEX ix_keyed_v ON keyed (v)",
    )
    assert getattr(too_large.orig, "sqlstate", "") == "54000"
    assert not is_transient(too_large)


@ON_POSTGRESQL
def test_a_lock_timeout_is_transient(database) -> None:
    engine, _ = database
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE"))
        locked = error_of(engine, "SELECT count(*) FROM devices")  # after lock_timeout, 100 ms
        holder.rollback()
    assert getattr(locked.orig, "sqlstate", "") == "55P03"
    assert is_transient(locked)
