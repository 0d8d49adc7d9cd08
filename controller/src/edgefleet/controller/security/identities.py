"""Broker identities of the fleet: the controller's and one per device, with their roles.

Every change goes through the dynamic security plugin's admin API, so it applies at once without
a broker restart; revoking or rotating a device also disconnects its live sessions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.controller.security.acl import (
    CONTROLLER_ROLE,
    DEFAULT_ACL_ACCESS,
    FLEET_DEVICE_ROLE,
    Role,
    controller_role,
    device_role,
    device_role_name,
    fleet_device_role,
    group_role,
    group_role_name,
)
from edgefleet.controller.security.dynsec import DynsecAdmin, new_password
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.errors import DeviceAlreadyEnrolledError, UnknownDeviceError
from edgefleet.shared.topics import Topics, validate_device_id, validate_group

# ':' cannot occur in a device id, so no device can ever be enrolled under these names.
CONTROLLER_USERNAME = "edgefleet:controller"
ADMIN_USERNAME = "edgefleet:admin"

_ROLE_EXISTS = "Role already exists"
_GROUP_EXISTS = "Group already exists"
_CLIENT_EXISTS = "Client already exists"
_CLIENT_NOT_FOUND = "Client not found"
_ROLE_NOT_FOUND = "Role not found"


def groups_for(labels: Mapping[str, str], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The broker groups of a device: ``extra`` plus one ``key=value`` group per label, so a
    rollout can target ``<root>/groups/site=plant-3/desired``.

    Raises:
        InvalidTopicError: a group (or label turned group) is not a valid topic level.
    """
    names = [*extra, *(f"{key}={value}" for key, value in labels.items())]
    return tuple(dict.fromkeys(validate_group(name) for name in names))


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's broker identity as enrolled."""

    device_id: str
    credentials: BrokerCredentials
    groups: tuple[str, ...]


class BrokerIdentities:
    """Creates, rotates and revokes broker identities for the fleet under one topic root.

    Role names do not carry the root: one broker (one plugin config) serves one fleet root.
    """

    def __init__(self, admin: DynsecAdmin, topics: Topics) -> None:
        self.admin = admin
        self.topics = topics

    # -- fleet-wide ---------------------------------------------------------------------------
    def setup_fleet(self) -> None:
        """Deny by default and (re)write the controller and shared device roles. Idempotent."""
        acls = [{"acltype": k, "allow": v} for k, v in DEFAULT_ACL_ACCESS.items()]
        self.admin.execute([{"command": "setDefaultACLAccess", "acls": acls}])
        self._ensure_role(controller_role(self.topics))
        self._ensure_role(fleet_device_role(self.topics))

    def setup_controller(
        self, username: str = CONTROLLER_USERNAME, password: str | None = None
    ) -> BrokerCredentials:
        """Create the controller's identity, or give it a new password if it exists.

        Returns the credentials the controller connects with.
        """
        self.setup_fleet()
        credentials = BrokerCredentials(username, password or new_password())
        self._create_or_reset_client(credentials, roles=[CONTROLLER_ROLE], groups=[])
        return credentials

    # -- devices ------------------------------------------------------------------------------
    def add_device(self, device_id: str, groups: Iterable[str] = ()) -> DeviceIdentity:
        """Create a device identity with a fresh random password.

        Raises:
            DeviceAlreadyEnrolledError: the device already has an identity.
            InvalidTopicError: the device id or a group name is not valid.
        """
        validate_device_id(device_id)
        group_list = tuple(dict.fromkeys(validate_group(g) for g in groups))
        self._ensure_role(fleet_device_role(self.topics))
        self._ensure_role(device_role(self.topics, device_id))
        for group in group_list:
            self._ensure_group(group)
        credentials = BrokerCredentials(device_id, new_password())
        responses = self.admin.execute(
            [self._create_client(credentials, self._device_roles(device_id), group_list)],
            tolerate=[_CLIENT_EXISTS],
        )
        if responses[0].get("error") == _CLIENT_EXISTS:
            raise DeviceAlreadyEnrolledError(device_id)
        return DeviceIdentity(device_id, credentials, group_list)

    def reenroll_device(self, device_id: str, groups: Iterable[str] = ()) -> DeviceIdentity:
        """Replace a device's identity (if any) by a new one: old sessions are disconnected and
        the old password stops working."""
        with contextlib.suppress(UnknownDeviceError):
            self.revoke_device(device_id)
        return self.add_device(device_id, groups)

    def rotate_device(self, device_id: str) -> BrokerCredentials:
        """Give an enrolled device a new password and disconnect its sessions (same roles).

        Raises:
            UnknownDeviceError: the device has no identity.
        """
        credentials = BrokerCredentials(validate_device_id(device_id), new_password())
        self._require_client(device_id)
        # disableClient kicks live sessions; mosquitto 2.0 does not on a password change alone.
        self.admin.execute(
            [
                {"command": "disableClient", "username": device_id},
                {
                    "command": "setClientPassword",
                    "username": device_id,
                    "password": credentials.password,
                },
                {"command": "enableClient", "username": device_id},
            ]
        )
        return credentials

    def revoke_device(self, device_id: str) -> None:
        """Delete the device's identity and role and disconnect its sessions.

        Raises:
            UnknownDeviceError: the device has no identity.
        """
        self._require_client(validate_device_id(device_id))
        self.admin.execute(
            [
                {"command": "disableClient", "username": device_id},
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_role_name(device_id)},
            ],
            tolerate=[_CLIENT_NOT_FOUND, _ROLE_NOT_FOUND],
        )

    def set_device_groups(self, device_id: str, groups: Iterable[str]) -> None:
        """Make the device a member of exactly ``groups`` (creating missing groups).

        Raises:
            UnknownDeviceError: the device has no identity.
        """
        group_list = tuple(dict.fromkeys(validate_group(g) for g in groups))
        self._require_client(validate_device_id(device_id))
        for group in group_list:
            self._ensure_group(group)
        self.admin.execute(
            [
                {
                    "command": "modifyClient",
                    "username": device_id,
                    "groups": [{"groupname": group_role_name(g)} for g in group_list],
                }
            ]
        )

    def is_enrolled(self, device_id: str) -> bool:
        response = self.admin.execute(
            [{"command": "getClient", "username": validate_device_id(device_id)}],
            tolerate=[_CLIENT_NOT_FOUND],
        )[0]
        return "error" not in response

    # -- internals ----------------------------------------------------------------------------
    @staticmethod
    def _device_roles(device_id: str) -> list[str]:
        return [device_role_name(device_id), FLEET_DEVICE_ROLE]

    @staticmethod
    def _create_client(
        credentials: BrokerCredentials, roles: Iterable[str], groups: Iterable[str]
    ) -> dict[str, Any]:
        return {
            "command": "createClient",
            "username": credentials.username,
            "password": credentials.password,
            "roles": [{"rolename": r} for r in roles],
            "groups": [{"groupname": group_role_name(g)} for g in groups],
        }

    def _require_client(self, device_id: str) -> None:
        if not self.is_enrolled(device_id):
            raise UnknownDeviceError(device_id)

    def _create_or_reset_client(
        self, credentials: BrokerCredentials, *, roles: list[str], groups: list[str]
    ) -> None:
        response = self.admin.execute(
            [self._create_client(credentials, roles, groups)], tolerate=[_CLIENT_EXISTS]
        )[0]
        if response.get("error") == _CLIENT_EXISTS:
            name = credentials.username
            self.admin.execute(
                [
                    {
                        "command": "modifyClient",
                        "username": name,
                        "roles": [{"rolename": r} for r in roles],
                        "groups": [{"groupname": group_role_name(g)} for g in groups],
                    },
                    {"command": "disableClient", "username": name},
                    {
                        "command": "setClientPassword",
                        "username": name,
                        "password": credentials.password,
                    },
                    {"command": "enableClient", "username": name},
                ]
            )

    def _ensure_role(self, role: Role) -> None:
        """Create the role, or replace the rules of an existing role of that name."""
        response = self.admin.execute(
            [{"command": "createRole", "rolename": role.name, "acls": role.acls_json()}],
            tolerate=[_ROLE_EXISTS],
        )[0]
        if response.get("error") == _ROLE_EXISTS:
            self.admin.execute(
                [{"command": "modifyRole", "rolename": role.name, "acls": role.acls_json()}]
            )

    def _ensure_group(self, group: str) -> None:
        role = group_role(self.topics, group)
        self._ensure_role(role)
        self.admin.execute(
            [
                {
                    "command": "createGroup",
                    "groupname": group_role_name(group),
                    "roles": [{"rolename": role.name}],
                }
            ],
            tolerate=[_GROUP_EXISTS],
        )
