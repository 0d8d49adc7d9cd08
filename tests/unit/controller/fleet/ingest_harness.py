"""Driving the ingest in tests: a database that refuses chosen devices' rows as it would a
hostile value, and the ingest task run in an event loop as the service runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine

from edgefleet.controller.fleet.ingest import FleetIngest


def refuse_devices(engine: Engine, prefix: str) -> None:
    """Make the database itself refuse any device or event row of a device id starting with
    ``prefix`` (a trigger on SQLite, a CHECK constraint on PostgreSQL): values that decode
    fine but cannot be stored."""

    def starts(column: str) -> str:
        return f"substr({column}, 1, {len(prefix)}) = '{prefix}'"

    with engine.begin() as connection:
        for table, column in (("devices", "id"), ("events", "device_id")):
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql(
                    f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                    f"WHEN {starts('NEW.' + column)} "
                    f"BEGIN SELECT RAISE(ABORT, 'refused: {prefix} device'); END"
                )
            else:
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} ADD CONSTRAINT refuse_{table} "
                    f"CHECK (NOT {starts(column)})"
                )


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait, in the event loop, until ``condition`` holds (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def run_ingest(ingest: FleetIngest, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` while the ingest's task drains its queues, as the service does."""

    async def main() -> None:
        runner = asyncio.create_task(ingest.run(), name="fleet-ingest")
        try:
            await scenario()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(main())
