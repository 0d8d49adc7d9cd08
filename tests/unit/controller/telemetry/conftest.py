"""A real SQLite database per test, with every controller table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.registry.db import Base, create_engine_for, session_factory
from edgefleet.controller.rollouts import tables as _rollout_tables  # noqa: F401
from edgefleet.controller.telemetry import tables as _telemetry_tables  # noqa: F401


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'controller.db'}")
    Base.metadata.create_all(engine)
    yield session_factory(engine)
    engine.dispose()
