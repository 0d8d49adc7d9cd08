"""Database plumbing: the declarative ``Base`` every controller table extends, engines, sessions,
and the schema, which Alembic migrations in ``migrations/`` build and upgrade.

Tables of later features (devices, rollouts) subclass :class:`Base`; a change to any table needs a
revision in ``migrations/versions/``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.private_files import prepare_sqlite_file

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every controller table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_WAL_SWITCH_S = 10.0  # how long a new connection retries switching a fresh database to WAL


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        _switch_to_wal(cursor)
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried: while another connection is switching a fresh
    database (two controllers started together), SQLite answers "database is locked" at once,
    without waiting on the busy timeout.

    Raises:
        sqlite3.OperationalError: still locked after ``_WAL_SWITCH_S``, or any other error.
    """
    deadline = time.monotonic() + _WAL_SWITCH_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def create_engine_for(url: str, **kwargs: Any) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets WAL, foreign keys, and its directory (0700)
    and file (0600) created private whatever the umask (its -wal/-shm/-journal files take the
    database file's mode)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and _is_sqlite_file(database, parsed.query):
            prepare_sqlite_file(Path(database))
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _enable_sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _is_sqlite_file(database: str, query: Any) -> bool:
    # Not in-memory databases, nor "file:" URIs (uri=true), whose options SQLite interprets.
    if database == ":memory:" or database.startswith("file:"):
        return False
    return str(query.get("uri", "")).lower() not in {"true", "1"}


MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# What release 0.1.0's create_all made, before the schema had revisions (revision 0001 since).
RELEASE_0_1_0_TABLES = frozenset(
    {
        "models", "model_versions", "artifacts", "devices", "events", "telemetry",
        "system_samples", "rollouts", "rollout_devices", "telemetry_rollups", "system_rollups",
        "telemetry_rollup_marks",
    }
)  # fmt: skip

# Key of the PostgreSQL advisory lock migrations hold: any constant nothing else on the server uses.
_POSTGRES_SCHEMA_LOCK = int.from_bytes(b"efschema", "big")


class SchemaTooNewError(ControllerError):
    """The database was migrated by a newer controller, to a revision this one does not know."""

    def __init__(self, revision: str, head: str) -> None:
        super().__init__(
            f"database schema is at revision {revision}, newer than this controller knows "
            f"(head {head}); upgrade edgefleet-controller"
        )
        self.revision = revision
        self.head = head


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema revision by running its Alembic migrations.

    An empty database is built from revision 0001 on; one release 0.1.0 made (its tables, no
    ``alembic_version``) is adopted as revision 0001 and upgraded; one at head is left alone. The
    check and the upgrade are one transaction holding the database's write or advisory lock, so
    controllers started together migrate once.

    Raises:
        SchemaTooNewError: the database is at a revision this controller does not know.
    """
    with _schema_transaction(engine) as connection:
        config = _alembic_config(connection)
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head() or ""
        current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        if current is None:
            # Revision 0001 creates only what 0.1.0's create_all had not (see its _create_table).
            adopted = RELEASE_0_1_0_TABLES & set(inspect(connection).get_table_names())
            config.attributes["adopted_tables"] = adopted
            start = "release 0.1.0 (no revision)" if adopted else "an empty database"
        elif current in {known.revision for known in script.walk_revisions()}:
            start = f"revision {current}"
        else:
            raise SchemaTooNewError(current, head)
        command.upgrade(config, "head")
        log.info("database schema upgraded from %s to revision %s", start, head)


def schema_head() -> str:
    """The newest schema revision this controller knows."""
    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head() or ""


def _alembic_config(connection: Connection | None) -> Config:
    # No alembic.ini: the migrations ship inside the package and run on the caller's connection.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction around the whole check and upgrade, under a lock only one process holds."""
    if engine.dialect.name == "sqlite":
        with _sqlite_schema_transaction(engine) as connection:
            yield connection
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Held until commit; a second controller waits here, then finds the schema at head.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_SCHEMA_LOCK}
            )
        yield connection


@contextmanager
def _sqlite_schema_transaction(engine: Engine) -> Iterator[Connection]:
    # pysqlite opens a transaction only before DML, so DDL would commit statement by statement:
    # with the driver in autocommit, an explicit BEGIN IMMEDIATE makes the upgrade one transaction
    # and takes the write lock at once. Foreign keys are off meanwhile (the pragma is a no-op inside
    # a transaction) because a batch migration that rebuilds a parent table drops the old one, and
    # that DROP would cascade onto the children's rows.
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        driver = connection.connection.driver_connection
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one()
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if driver is not None and driver.in_transaction:  # SQLite may have ended it
                    connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        finally:
            connection.exec_driver_sql(f"PRAGMA foreign_keys={int(foreign_keys)}")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` that keep loaded attributes after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)
