"""The plugin's first config: password hashes in mosquitto's format, an admin that can do
nothing but administer, deny by default."""

from __future__ import annotations

import base64
import json

import pytest

from edgefleet.controller.security.dynsec import (
    ADMIN_ROLE,
    bootstrap_config,
    hash_password,
    new_password,
    write_bootstrap_config,
)
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.errors import WouldOverwriteError


def test_password_hash_matches_mosquitto_ctrl():
    # From `mosquitto_ctrl dynsec init file admin adminpw` (mosquitto 2.0.11).
    salt = base64.b64decode("CYMHOtv7bjCstSYT")
    assert hash_password("adminpw", salt=salt) == {
        "password": "KgM6E9KqKB4XUjESjbdbuG50bvac6eDHNNdl867uaC9ULCL7TjKiJFhgjrVU1JCCvFN1lOS+"
        "EYwUAvmYrb0xLw==",
        "salt": "CYMHOtv7bjCstSYT",
        "iterations": 101,
    }


def test_passwords_are_random_and_long():
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) >= 43 for p in passwords)


def test_bootstrap_admin_may_only_use_the_control_api():
    config = bootstrap_config(BrokerCredentials("edgefleet:admin", "pw"))
    (client,) = config["clients"]
    assert client["username"] == "edgefleet:admin"
    assert "pw" not in json.dumps(config)
    (role,) = config["roles"]
    assert role["rolename"] == ADMIN_ROLE
    assert {acl["topic"] for acl in role["acls"]} == {"$CONTROL/dynamic-security/#"}
    assert config["defaultACLAccess"]["publishClientSend"] is False
    assert config["defaultACLAccess"]["subscribe"] is False


def test_bootstrap_file_is_0600_and_not_overwritten(tmp_path):
    path = tmp_path / "dynamic-security.json"
    write_bootstrap_config(path, BrokerCredentials("edgefleet:admin", "pw"))
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    with pytest.raises(WouldOverwriteError):
        write_bootstrap_config(path, BrokerCredentials("edgefleet:admin", "other"))
    assert path.read_bytes() == first
