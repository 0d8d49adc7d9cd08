"""Mosquitto's dynamic security plugin: the first config file, and an admin client for its API.

The admin client publishes JSON commands on ``$CONTROL/dynamic-security/v1`` and waits for the
matching response (by ``correlationData``). It is synchronous (paho network thread); asyncio
callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from edgefleet.controller.security._filewrite import SECRET_MODE, refuse_overwrite, write_file
from edgefleet.controller.security.acl import DEFAULT_ACL_ACCESS
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.errors import (
    BrokerAuthError,
    BrokerUnreachableError,
    DynsecCommandError,
)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ADMIN_ROLE = "edgefleet-dynsec-admin"
# mosquitto 2.0 stores PBKDF2-SHA512 with 101 iterations for clients made over the API; our
# passwords are 256-bit random, so the iteration count is not what protects them.
PBKDF2_ITERATIONS = 101


def new_password() -> str:
    """A random broker password (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, salt: bytes | None = None) -> dict[str, Any]:
    """The plugin's stored form of a password: base64 PBKDF2-HMAC-SHA512, salt, iterations."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
    }


def bootstrap_config(admin: BrokerCredentials) -> dict[str, Any]:
    """A plugin config holding only the admin identity (allowed nothing but the control API)
    and deny-by-default ACL access."""
    control = f"{CONTROL_TOPIC.rsplit('/', 1)[0]}/#"
    return {
        "clients": [
            {
                "username": admin.username,
                "textName": "edgefleet dynamic-security admin",
                **hash_password(admin.password),
                "roles": [{"rolename": ADMIN_ROLE}],
            }
        ],
        "roles": [
            {
                "rolename": ADMIN_ROLE,
                "acls": [
                    {"acltype": acltype, "topic": control, "allow": True}
                    for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern")
                ],
            }
        ],
        "groups": [],
        "defaultACLAccess": dict(DEFAULT_ACL_ACCESS),
    }


def write_bootstrap_config(path: Path, admin: BrokerCredentials, *, force: bool = False) -> None:
    """Write the first plugin config (0600: it holds password hashes).

    Raises:
        WouldOverwriteError: ``path`` exists and ``force`` is off (it may hold the live fleet).
    """
    refuse_overwrite([path], force=force)
    write_file(path, (json.dumps(bootstrap_config(admin), indent=2) + "\n").encode(), SECRET_MODE)


class DynsecAdmin:
    """A connected admin client of the dynamic security plugin (use as a context manager)."""

    def __init__(self, endpoint: BrokerEndpoint, *, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-admin-{uuid.uuid4().hex[:10]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        endpoint.configure(self._client)
        self._cond = threading.Condition()
        self._responses: dict[str, dict[str, Any]] = {}
        self._connack: Any = None
        self._subscribed: list[Any] | None = None
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # -- paho callbacks (network thread): record and notify, never block ---------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self._connack = reason
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._subscribed = list(codes)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            body = json.loads(message.payload)
            responses = body["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            for response in responses:
                if isinstance(response, dict) and "correlationData" in response:
                    self._responses[str(response["correlationData"])] = response
            self._cond.notify_all()

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> DynsecAdmin:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, log in as the admin and subscribe to the plugin's responses.

        Raises:
            BrokerUnreachableError: no TCP/TLS connection or no answer within the timeout.
            BrokerAuthError: the broker refused the credentials or the response subscription.
        """
        url = self.endpoint.url
        try:
            self._client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        except (OSError, ValueError) as e:
            raise BrokerUnreachableError(url, str(e)) from e
        self._client.loop_start()
        with self._cond:
            answered = self._cond.wait_for(lambda: self._connack is not None, self.timeout)
        if not answered:
            self.close()
            raise BrokerUnreachableError(url, f"no CONNACK within {self.timeout}s")
        if self._connack.is_failure:
            self.close()
            raise BrokerAuthError(url, str(self._connack))
        self._client.subscribe(RESPONSE_TOPIC, qos=1)
        with self._cond:
            answered = self._cond.wait_for(lambda: self._subscribed is not None, self.timeout)
        codes = self._subscribed or []
        if not answered or any(code.is_failure for code in codes):
            self.close()
            raise BrokerAuthError(url, f"cannot subscribe to {RESPONSE_TOPIC}: {codes}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- commands -----------------------------------------------------------------------------
    def run(self, commands: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one request and return one response per command, in order.

        Raises:
            BrokerUnreachableError: the responses did not all arrive within the timeout.
        """
        tagged = [{**command, "correlationData": uuid.uuid4().hex} for command in commands]
        if not tagged:
            return []
        ids = [command["correlationData"] for command in tagged]
        info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnreachableError(self.endpoint.url, f"publish failed: {info.rc}")
        with self._cond:
            done = self._cond.wait_for(lambda: all(i in self._responses for i in ids), self.timeout)
            if not done:
                raise BrokerUnreachableError(
                    self.endpoint.url, f"no dynamic-security response within {self.timeout}s"
                )
            return [self._responses.pop(i) for i in ids]

    def execute(
        self, commands: Iterable[dict[str, Any]], *, tolerate: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Like :meth:`run`, but raise on the first error not listed in ``tolerate``.

        Raises:
            DynsecCommandError: a command failed with an error not tolerated.
            BrokerUnreachableError: see :meth:`run`.
        """
        tolerated = set(tolerate)
        responses = self.run(commands)
        for response in responses:
            error = response.get("error")
            if error and error not in tolerated:
                raise DynsecCommandError(str(response.get("command")), str(error))
        return responses
