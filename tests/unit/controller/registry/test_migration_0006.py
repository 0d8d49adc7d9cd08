"""Revision 0006 on real SQLite and PostgreSQL: rollups written before it, all of v1 summaries,
keep their percentiles, now standing for their requests, and read back marked approximate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    column,
    insert,
    table,
    text,
)

from edgefleet.controller.registry.db import (
    MIGRATIONS_DIR,
    create_engine_for,
    create_schema,
    session_factory,
)
from edgefleet.controller.telemetry.history import HOUR, RetentionPolicy
from edgefleet.controller.telemetry.series import query_series

HOUR_9 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def upgrade_to(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_rollups_before_0006_stand_for_their_requests_and_read_as_approximate(
    engine: Engine,
) -> None:
    upgrade_to(engine, "0005")
    # The tables as 0005 left them (typed, so times are stored as SQLAlchemy stores them).
    rollups = table(
        "telemetry_rollups", *(column(n, Integer()) for n in ("resolution_s", "windows")),
        column("bucket_start", DateTime(timezone=True)),
        *(column(n, String()) for n in ("device_id", "model_id", "version")),
        *(column(n, BigInteger()) for n in ("requests", "errors")),
        *(column(n, Float()) for n in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
    )  # fmt: skip
    marks = table(
        "telemetry_rollup_marks", column("resolution_s", Integer()),
        column("rolled_until", DateTime(timezone=True)),
    )  # fmt: skip
    with engine.begin() as connection:
        # (device, requests, windows, p95): two rollups of 09:00 and one without latency
        for device, requests, windows, p95 in (("a", 300, 6, 10.0), ("b", 100, 6, 2.0),
                                               ("c", 0, 6, None)):  # fmt: skip
            connection.execute(
                insert(rollups).values(
                    resolution_s=HOUR, bucket_start=HOUR_9, device_id=device, model_id="m",
                    version="1", windows=windows, requests=requests, errors=0,
                    p50_ms=p95 and p95 / 2, p95_ms=p95, p99_ms=p95 and p95 * 2, max_ms=p95,
                )
            )  # fmt: skip
        connection.execute(
            insert(marks),
            [{"resolution_s": 60, "rolled_until": NOW - timedelta(minutes=2)},
             {"resolution_s": 3600, "rolled_until": NOW - timedelta(hours=1)}],
        )  # fmt: skip

    create_schema(engine)  # 0005 -> head

    with engine.connect() as connection:
        weights = dict(
            connection.execute(
                text("SELECT device_id, summary_requests FROM telemetry_rollups")
            ).all()
        )
        assert weights == {"a": 300, "b": 100, "c": 0}
    sessions = session_factory(engine)
    with sessions() as session:
        series = query_series(
            session, device_ids=None, since=HOUR_9, until=HOUR_9 + timedelta(hours=1), now=NOW,
            policy=RetentionPolicy(raw_s=3600, minute_s=3600), step_s=HOUR,
        )  # fmt: skip
    assert series.resolution == "hour"
    (point,) = series.latency[("m", "1")]
    assert point.p95_ms == pytest.approx((300 * 10.0 + 100 * 2.0) / 400)  # as before 0006
    assert point.requests == 400
    assert not point.exact
