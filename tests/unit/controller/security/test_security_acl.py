"""The role definitions: each device's rules name only its own topics; no role reaches further
than its table row in deploy/README.md."""

from __future__ import annotations

import pytest

from edgefleet.controller.security.acl import (
    DEFAULT_ACL_ACCESS,
    AclType,
    controller_role,
    device_role,
    fleet_device_role,
    group_role,
    group_role_name,
)
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.topics import Topics

T = Topics("fleet/v1")


def _rules(role, acltype):
    return {rule.topic for rule in role.rules if rule.acltype is acltype}


def test_default_access_denies_everything_but_unsubscribe():
    assert DEFAULT_ACL_ACCESS == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_device_role_names_only_its_own_topics():
    role = device_role(T, "pi-7")
    assert role.name == "edgefleet-device-pi-7"
    assert _rules(role, AclType.PUBLISH_SEND) == {
        f"fleet/v1/devices/pi-7/{c}" for c in ("hello", "state", "telemetry", "events", "fetch")
    }
    own_inbox = {"fleet/v1/devices/pi-7/desired", "fleet/v1/devices/pi-7/commands"}
    assert _rules(role, AclType.SUBSCRIBE) == own_inbox
    assert _rules(role, AclType.PUBLISH_RECEIVE) == own_inbox
    assert not any("+" in rule.topic or "#" in rule.topic for rule in role.rules)


def test_fleet_and_group_roles_read_only_chunks_and_that_groups_desired_state():
    fleet = fleet_device_role(T)
    assert _rules(fleet, AclType.SUBSCRIBE) == {"fleet/v1/artifacts/+/chunks"}
    assert _rules(fleet, AclType.PUBLISH_RECEIVE) == {"fleet/v1/artifacts/+/chunks"}
    assert _rules(fleet, AclType.PUBLISH_SEND) == set()
    group = group_role(T, "site=plant-3")
    assert group.name == group_role_name("site=plant-3") == "edgefleet-group-site=plant-3"
    assert _rules(group, AclType.SUBSCRIBE) == {"fleet/v1/groups/site=plant-3/desired"}
    assert _rules(group, AclType.PUBLISH_SEND) == set()


def test_controller_role_reads_device_channels_and_publishes_instructions():
    role = controller_role(T)
    outbound = ("hello", "state", "telemetry", "events", "fetch")
    assert _rules(role, AclType.PUBLISH_SEND) == {
        "fleet/v1/devices/+/desired",
        "fleet/v1/devices/+/commands",
        "fleet/v1/groups/+/desired",
        "fleet/v1/artifacts/+/chunks",
    }
    reads = {f"fleet/v1/devices/+/{c}" for c in outbound}
    reads |= {"fleet/v1/devices/+/desired", "fleet/v1/groups/+/desired"}
    assert _rules(role, AclType.PUBLISH_RECEIVE) == reads
    shared = {f"$share/+/fleet/v1/devices/+/{c}" for c in outbound}
    assert _rules(role, AclType.SUBSCRIBE) == reads | shared
    # The controller never speaks for a device.
    assert not any(t.endswith(outbound) for t in _rules(role, AclType.PUBLISH_SEND))


@pytest.mark.parametrize("bad", ["+", "#", "a/b", "", "x" * 65, "pi 7"])
def test_wildcards_and_separators_never_become_a_devices_rule(bad):
    with pytest.raises(InvalidTopicError):
        device_role(T, bad)


def test_rules_serialise_as_the_plugin_expects():
    rule = device_role(T, "pi-7").rules[0]
    assert rule.to_json() == {
        "acltype": "publishClientSend",
        "topic": "fleet/v1/devices/pi-7/hello",
        "allow": True,
        "priority": 0,
    }
