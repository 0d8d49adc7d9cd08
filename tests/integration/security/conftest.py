"""Fixtures for the security integration tests: brokers from the production config generator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from edgefleet.controller.security.dynsec import DynsecAdmin
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.identities import BrokerIdentities
from edgefleet.shared.topics import Topics
from support.secure_broker import SecureBroker


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """One TLS + dynamic-security broker per test module."""
    broker = SecureBroker(tmp_path_factory.mktemp("secure-broker"))
    broker.start()
    yield broker
    broker.kill()


@dataclass
class Fleet:
    """A broker with the fleet roles, the controller identity and an admin session."""

    broker: SecureBroker
    topics: Topics
    admin: DynsecAdmin
    identities: BrokerIdentities
    controller: BrokerCredentials


@pytest.fixture(scope="module")
def fleet(secure_broker: SecureBroker) -> Iterator[Fleet]:
    # Role names carry no topic root: one broker serves one root, so one root per module.
    topics = Topics(root=f"edgefleet-test/{uuid.uuid4().hex[:12]}/v1")
    with DynsecAdmin(secure_broker.admin_endpoint()) as admin:
        identities = BrokerIdentities(admin, topics)
        controller = identities.setup_controller()
        yield Fleet(secure_broker, topics, admin, identities, controller)


@pytest.fixture
def device_ids() -> tuple[str, str]:
    """Two device ids unique to this test."""
    suffix = uuid.uuid4().hex[:8]
    return f"pi-a-{suffix}", f"pi-b-{suffix}"
