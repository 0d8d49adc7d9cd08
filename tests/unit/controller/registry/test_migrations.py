"""The schema's Alembic migrations, on real SQLite and PostgreSQL: a database release 0.1.0 made is
upgraded with its rows intact, and a fresh one matches the tables the code declares."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from edgefleet.controller.config import Settings
from edgefleet.controller.fleet.tables import DeviceRow, EventRow, SystemSampleRow, TelemetryRow
from edgefleet.controller.registry.db import (
    MIGRATIONS_DIR,
    RELEASE_0_1_0_TABLES,
    Base,
    SchemaTooNewError,
    aware,
    create_engine_for,
    create_schema,
    schema_head,
)
from edgefleet.controller.registry.tables import ModelRow
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.service import open_database

DUMPS = Path(__file__).parents[3] / "data" / "release-0.1.0"
REGISTRY_TABLES = {"models", "model_versions", "artifacts"}


def at(hour: int, minute: int) -> datetime:
    return datetime(2026, 11, 20, hour, minute, tzinfo=UTC)


def load_release_0_1_0(url: str) -> None:
    """Fill the empty database at ``url`` from the dump of a database release 0.1.0 made."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(str(parsed.database))) as db:
            db.executescript((DUMPS / "sqlite.sql").read_text())
        return
    import psycopg

    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute((DUMPS / "postgres.sql").read_text())  # no parameters: many statements at once


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_differences(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_server_default": True})
        return list(compare_metadata(context, metadata))


def test_upgrade_previous_release_database(database_url: str, tmp_path: Path) -> None:
    load_release_0_1_0(database_url)

    engine, sessions = open_database(Settings(database_url=database_url, data_dir=tmp_path))

    try:
        assert revision_of(engine) == schema_head()
        with sessions() as session:
            rollout = session.get(RolloutRow, 1)
            assert rollout is not None
            assert (rollout.model, rollout.version, rollout.status) == ("digits", "2", "running")
            assert (rollout.current_wave, rollout.waves, rollout.wave_spec) == (1, [1, 3], "1,100%")
            assert rollout.policy["on_breach"] == "rollback"
            assert rollout.gate == {"wave": 0, "passed": True, "checks": []}
            assert aware(rollout.updated_at) == at(12, 0)
            # Its open wave now has a start, so its deadlines run from the upgrade on.
            assert rollout.wave_started_at is not None
            assert aware(rollout.wave_started_at) == aware(rollout.updated_at)
            assert rollout.finished_at is None

            rows = session.scalars(
                select(RolloutDeviceRow)
                .where(RolloutDeviceRow.rollout_id == 1)
                .order_by(RolloutDeviceRow.id)
            )
            targets = {target.device_id: target for target in rows}
            assert [(t.device_id, t.wave, t.state) for t in targets.values()] == [
                ("pi-0", 0, "active"),
                ("pi-1", 1, "sent"),
                ("pi-2", 1, "planned"),
            ]
            assert targets["pi-0"].serial == 2
            assert targets["pi-0"].published is True
            assert targets["pi-0"].previous == {
                "model_id": "digits",
                "version": "1",
                "serial": 1,
                "sha256": "a" * 64,
                "target": "onnx-fp32",
            }
            assert targets["pi-0"].converged_at is not None
            assert aware(targets["pi-0"].converged_at) == at(12, 1)
            assert targets["pi-2"].published is False
            assert targets["pi-2"].sha256 is None
            assert all(target.offline_at_start is False for target in targets.values())
            assert all(target.manifest_expires_at is None for target in targets.values())
            sent = targets["pi-1"]
            assert sent.sent_at is not None
            assert sent.deadline_at is not None
            assert aware(sent.deadline_at) == aware(sent.sent_at) + timedelta(seconds=900)
            assert targets["pi-0"].deadline_at is None  # converged before the upgrade
            assert targets["pi-2"].deadline_at is None  # never sent

            devices = session.scalars(select(DeviceRow).order_by(DeviceRow.id)).all()
            assert [(d.id, d.online, d.status) for d in devices] == [
                ("pi-0", True, "serving"),
                ("pi-1", True, "serving"),
                ("pi-2", False, "offline"),
            ]
            assert devices[0].active is not None
            assert devices[0].active["version"] == "2"
            assert devices[0].labels == {"site": "plant-3"}
            assert all(device.wire_version == 1 for device in devices)
            assert all(device.state_seq is None and device.progress is None for device in devices)

            event = session.scalars(select(EventRow)).one()
            assert (event.device_id, event.type, event.figures) == (
                "pi-0",
                "swapped",
                {"p95_ms": 1.5},
            )
            telemetry = session.scalars(select(TelemetryRow)).one()
            assert (telemetry.requests, telemetry.p95_ms) == (100, 1.5)
            assert session.scalar(select(func.count()).select_from(SystemSampleRow)) == 1
            model = session.scalars(select(ModelRow)).one()
            assert [v.version for v in model.versions] == ["1", "2"]

        # New rows take the ids after the old ones (PostgreSQL's sequences survived).
        with sessions.begin() as session:
            session.add(ModelRow(name="keywords"))
        with Session(engine) as session:
            assert session.scalar(select(ModelRow.id).where(ModelRow.name == "keywords")) == 2
        assert schema_differences(engine, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_previous_release_database_without_fleet_tables(
    database_url: str, engine: Engine
) -> None:
    # 0.1.0 created tables lazily: `edgefleet model ...` alone left a database of the registry's.
    load_release_0_1_0(database_url)
    later = MetaData()
    later.reflect(engine, only=sorted(RELEASE_0_1_0_TABLES - REGISTRY_TABLES))
    later.drop_all(engine)

    create_schema(engine)

    assert revision_of(engine) == schema_head()
    assert schema_differences(engine, Base.metadata) == []
    with Session(engine) as session:
        assert session.scalars(select(ModelRow.name)).all() == ["digits"]


def test_revision_0001_is_the_release_0_1_0_schema(database_url: str, engine: Engine) -> None:
    load_release_0_1_0(database_url)
    release = MetaData()
    release.reflect(engine)
    release.drop_all(engine)

    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")

    assert schema_differences(engine, release) == []


def test_fresh_database_matches_the_tables(engine: Engine) -> None:
    create_schema(engine)

    assert revision_of(engine) == schema_head()
    # No exemptions needed: on both SQLite and PostgreSQL the reflected types, nullability,
    # indexes, constraints and server defaults compare equal to the declared ones.
    assert schema_differences(engine, Base.metadata) == []


def test_create_schema_is_idempotent(engine: Engine) -> None:
    create_schema(engine)
    create_schema(engine)

    assert revision_of(engine) == schema_head()
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}


def test_concurrent_create_schema_migrates_once(database_url: str) -> None:
    engines = [create_engine_for(database_url) for _ in range(2)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def migrate(engine: Engine) -> None:
        start.wait()
        try:
            create_schema(engine)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [
        threading.Thread(target=migrate, args=(engine,), name=f"create-schema-{i}")
        for i, engine in enumerate(engines)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    try:
        assert errors == []
        assert revision_of(engines[0]) == schema_head()
        with engines[0].connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert rows == [(schema_head(),)]
    finally:
        for engine in engines:
            engine.dispose()


def test_controllers_started_together_on_fresh_sqlite_files_both_migrate(
    tmp_path: Path,
) -> None:
    """A connection switching a SQLite file to WAL while another migrates it is answered
    "database is locked" at once, without the busy wait: it must retry, not fail. Twenty fresh
    files, as one start in six loses that race."""
    for round_ in range(20):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"
        engines = [create_engine_for(url) for _ in range(2)]
        start = threading.Barrier(len(engines))
        errors: list[BaseException] = []

        def migrate(
            engine: Engine, start: threading.Barrier = start, errors: list[BaseException] = errors
        ) -> None:
            start.wait()
            try:
                create_schema(engine)
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                errors.append(error)

        threads = [threading.Thread(target=migrate, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        try:
            assert errors == [], f"round {round_}: {errors}"
            assert revision_of(engines[0]) == schema_head()
        finally:
            for engine in engines:
                engine.dispose()


def test_newer_database_is_refused(engine: Engine) -> None:
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe0001'"))

    with pytest.raises(SchemaTooNewError, match="revision f00dcafe0001, newer") as refused:
        create_schema(engine)

    assert (refused.value.revision, refused.value.head) == ("f00dcafe0001", schema_head())
    assert revision_of(engine) == "f00dcafe0001"
