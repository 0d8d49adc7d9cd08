"""Fixtures shared by every test: real mosquitto brokers and per-test topic roots."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.shared.topics import Topics
from support.mosquitto import MosquittoBroker


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One mosquitto for the whole session. Tests isolate themselves by topic root."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A mosquitto for this test alone, free to be stopped, killed and restarted."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def topics() -> Topics:
    """A topic tree under a root unique to this test."""
    return Topics(root=f"edgefleet-test/{uuid.uuid4().hex[:12]}/v1")
