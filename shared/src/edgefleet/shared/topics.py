"""Every MQTT topic edgefleet uses, built and parsed here and nowhere else.

Topics live under a versioned root (``edgefleet/v1`` by default; tests use a unique root each).
Device ids are validated before they become part of a topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator

from edgefleet.shared.errors import InvalidTopicError

DEFAULT_ROOT = "edgefleet/v1"
MAX_DEVICE_ID_LENGTH = 64
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,63}")
_ROOT_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is safe as one topic level, file name and ACL username.

    Raises:
        InvalidTopicError: empty, longer than 64 characters, or holding ``+``, ``#``, ``/``,
            whitespace or anything outside ``[A-Za-z0-9._-]`` (first character alphanumeric).
    """
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidTopicError(
            f"invalid device id {device_id!r}: 1-{MAX_DEVICE_ID_LENGTH} characters of "
            "[A-Za-z0-9._-], starting with a letter or digit"
        )
    return device_id


def validate_sha256(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters.

    Raises:
        InvalidTopicError: anything else.
    """
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise InvalidTopicError(f"invalid sha256 {digest!r}: expected 64 lowercase hex characters")
    return digest


def validate_group(group: str) -> str:
    """Return ``group`` if it is safe as one topic level.

    Raises:
        InvalidTopicError: empty, too long or holding characters outside ``[A-Za-z0-9._=-]``.
    """
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        raise InvalidTopicError(f"invalid group name {group!r}")
    return group


DeviceId = Annotated[str, AfterValidator(validate_device_id)]
Sha256Hex = Annotated[str, AfterValidator(validate_sha256)]


class DeviceChannel(StrEnum):
    """The last level of a per-device topic."""

    HELLO = "hello"  # device -> controller, QoS 1, on every connect
    STATE = "state"  # device -> controller, QoS 1, retained; last will sets offline
    TELEMETRY = "telemetry"  # device -> controller, QoS 0
    EVENTS = "events"  # device -> controller, QoS 1
    FETCH = "fetch"  # device -> controller, QoS 1: chunk requests
    DESIRED = "desired"  # controller -> device, QoS 1, retained signed manifest
    COMMANDS = "commands"  # controller -> device, QoS 1


DEVICE_TO_CONTROLLER = (
    DeviceChannel.HELLO,
    DeviceChannel.STATE,
    DeviceChannel.TELEMETRY,
    DeviceChannel.EVENTS,
    DeviceChannel.FETCH,
)


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed per-device topic."""

    device_id: str
    channel: DeviceChannel


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses the topics under one root."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not _ROOT_RE.fullmatch(self.root):
            raise InvalidTopicError(f"invalid topic root {self.root!r}")

    def device(self, device_id: str, channel: DeviceChannel) -> str:
        """Topic of one device's channel, e.g. ``edgefleet/v1/devices/pi-7/state``."""
        return f"{self.root}/devices/{validate_device_id(device_id)}/{channel.value}"

    def hello(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.HELLO)

    def state(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.STATE)

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.TELEMETRY)

    def events(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.EVENTS)

    def fetch(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.FETCH)

    def desired(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.DESIRED)

    def commands(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.COMMANDS)

    def group_desired(self, group: str) -> str:
        """Desired state shared by a group of devices (retained)."""
        return f"{self.root}/groups/{validate_group(group)}/desired"

    def artifact_chunks(self, sha256: str) -> str:
        """Where the controller publishes the chunks of one artifact."""
        return f"{self.root}/artifacts/{validate_sha256(sha256)}/chunks"

    def all_devices(self, channel: DeviceChannel) -> str:
        """Wildcard filter for one channel of every device."""
        return f"{self.root}/devices/+/{channel.value}"

    @staticmethod
    def shared(group: str, topic_filter: str) -> str:
        """An MQTT 5 shared-subscription filter, so controller replicas split the load."""
        return f"$share/{validate_group(group)}/{topic_filter}"

    def parse_device_topic(self, topic: str) -> DeviceTopic:
        """Split a per-device topic into device id and channel.

        Raises:
            InvalidTopicError: not a per-device topic under this root, or an invalid id.
        """
        prefix = f"{self.root}/devices/"
        if not topic.startswith(prefix):
            raise InvalidTopicError(f"topic {topic!r} is not under {prefix!r}")
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2:
            raise InvalidTopicError(f"topic {topic!r} is not <root>/devices/<id>/<channel>")
        device_id, channel = parts
        try:
            parsed_channel = DeviceChannel(channel)
        except ValueError:
            raise InvalidTopicError(f"unknown device channel {channel!r} in {topic!r}") from None
        return DeviceTopic(validate_device_id(device_id), parsed_channel)

    def parse_artifact_topic(self, topic: str) -> str:
        """Return the sha256 of an artifact chunk topic.

        Raises:
            InvalidTopicError: not an artifact chunk topic under this root.
        """
        prefix = f"{self.root}/artifacts/"
        suffix = "/chunks"
        if not (topic.startswith(prefix) and topic.endswith(suffix)):
            raise InvalidTopicError(f"topic {topic!r} is not an artifact chunk topic")
        return validate_sha256(topic[len(prefix) : -len(suffix)])


DEFAULT_TOPICS = Topics()
