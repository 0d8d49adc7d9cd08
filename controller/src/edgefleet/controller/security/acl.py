"""The broker permissions of every edgefleet identity, as pure data (dynamic-security roles).

Default is deny for publishing, subscribing and receiving; each role allows exactly what its
identity needs. Rules are literal per device: mosquitto 2.0's dynamic security plugin does not
substitute ``%u``/``%c`` in role ACLs, so each device gets its own role.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edgefleet.shared.topics import (
    DEVICE_TO_CONTROLLER,
    DeviceChannel,
    Topics,
    validate_device_id,
    validate_group,
)

ROLE_PREFIX = "edgefleet"
CONTROLLER_ROLE = f"{ROLE_PREFIX}-controller"
FLEET_DEVICE_ROLE = f"{ROLE_PREFIX}-devices"
DEVICE_TO_BROKER = DEVICE_TO_CONTROLLER  # hello, state (incl. retained last will), telemetry...
BROKER_TO_DEVICE = (DeviceChannel.DESIRED, DeviceChannel.COMMANDS)


class AclType(StrEnum):
    """Dynamic-security ACL types used here."""

    PUBLISH_SEND = "publishClientSend"
    PUBLISH_RECEIVE = "publishClientReceive"
    SUBSCRIBE = "subscribePattern"


DEFAULT_ACL_ACCESS: dict[str, bool] = {
    "publishClientSend": False,
    # Deny delivery too, so a subscription that slipped through still carries nothing.
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


@dataclass(frozen=True, slots=True)
class AclRule:
    """One allow rule of a role."""

    acltype: AclType
    topic: str

    def to_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype.value, "topic": self.topic, "allow": True, "priority": 0}


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of rules, as the dynamic-security plugin stores it."""

    name: str
    rules: tuple[AclRule, ...]

    def acls_json(self) -> list[dict[str, Any]]:
        return [rule.to_json() for rule in self.rules]


def _read(topic_filter: str) -> tuple[AclRule, AclRule]:
    return AclRule(AclType.SUBSCRIBE, topic_filter), AclRule(AclType.PUBLISH_RECEIVE, topic_filter)


def _any_parent(topic: str) -> str:
    """``topic`` with its second-to-last level (the artifact or group name) replaced by ``+``."""
    levels = topic.split("/")
    levels[-2] = "+"
    return "/".join(levels)


def artifact_chunks_filter(topics: Topics) -> str:
    """``<root>/artifacts/+/chunks``."""
    return _any_parent(topics.artifact_chunks("0" * 64))


def group_desired_filter(topics: Topics) -> str:
    """``<root>/groups/+/desired``."""
    return _any_parent(topics.group_desired("any"))


def device_role_name(device_id: str) -> str:
    return f"{ROLE_PREFIX}-device-{validate_device_id(device_id)}"


def group_role_name(group: str) -> str:
    """Name of both the dynamic-security group and its role for a fleet group."""
    return f"{ROLE_PREFIX}-group-{validate_group(group)}"


def device_role(topics: Topics, device_id: str) -> Role:
    """Publish only its own device-to-controller topics; read only its own desired and commands."""
    rules: list[AclRule] = [
        AclRule(AclType.PUBLISH_SEND, topics.device(device_id, channel))
        for channel in DEVICE_TO_BROKER
    ]
    for channel in BROKER_TO_DEVICE:
        rules.extend(_read(topics.device(device_id, channel)))
    return Role(device_role_name(device_id), tuple(rules))


def fleet_device_role(topics: Topics) -> Role:
    """What every device shares: reading artifact chunks."""
    return Role(FLEET_DEVICE_ROLE, _read(artifact_chunks_filter(topics)))


def group_role(topics: Topics, group: str) -> Role:
    """Members of a fleet group read the group's desired state."""
    return Role(group_role_name(group), _read(topics.group_desired(group)))


def controller_role(topics: Topics) -> Role:
    """Read every device's outbound channels (also as ``$share/<any>/...``); publish desired
    state, commands, group desired state and artifact chunks, and read back the retained desired
    state it published (to reconcile after a restart)."""
    rules: list[AclRule] = [
        *_read(topics.all_devices(DeviceChannel.DESIRED)),
        *_read(group_desired_filter(topics)),
    ]
    for channel in DEVICE_TO_BROKER:
        every_device = topics.all_devices(channel)
        rules.extend(_read(every_device))
        rules.append(AclRule(AclType.SUBSCRIBE, f"$share/+/{every_device}"))
    rules += [
        AclRule(AclType.PUBLISH_SEND, topics.all_devices(channel)) for channel in BROKER_TO_DEVICE
    ]
    rules.append(AclRule(AclType.PUBLISH_SEND, group_desired_filter(topics)))
    rules.append(AclRule(AclType.PUBLISH_SEND, artifact_chunks_filter(topics)))
    return Role(CONTROLLER_ROLE, tuple(rules))
