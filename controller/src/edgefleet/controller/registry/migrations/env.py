"""Alembic environment: migrates the connection :func:`create_schema` hands over in
``config.attributes["connection"]``, inside the transaction it holds.

Every table module is imported so ``target_metadata`` is the whole schema, as autogenerate and the
metadata comparison in the tests need. Without a connection (a developer's own ``alembic``
configuration) it connects to ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine

from edgefleet.controller.fleet import tables as fleet_tables  # noqa: F401 - registers tables
from edgefleet.controller.registry import tables as registry_tables  # noqa: F401
from edgefleet.controller.registry.db import Base
from edgefleet.controller.rollouts import tables as rollout_tables  # noqa: F401
from edgefleet.controller.telemetry import tables as telemetry_tables  # noqa: F401

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters little in place; batch operations rebuild a table where they must.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():  # a no-op inside create_schema's own transaction
        context.run_migrations()


if context.is_offline_mode():
    # 0002 migrates rows it has to read first, which SQL scripts cannot do.
    raise CommandError("edgefleet migrations run against a database only: drop --sql")

given = context.config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    # A plain engine: SQLite then leaves foreign keys off, so a batch rebuild of a parent table
    # (its DROP) cannot cascade onto the children's rows.
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        run_migrations(connection)
    engine.dispose()
