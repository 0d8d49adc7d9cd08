"""Errors of the security tooling (PKI, broker identities, enrollment), under ``ControllerError``.

Integrity-like refusals (a file would be overwritten, a certificate does not fit) are never
retried; broker transport failures may be retried by the caller.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.controller.errors import ControllerError


class SecurityError(ControllerError):
    """Root of every error raised by ``edgefleet.controller.security``."""


class PkiError(SecurityError):
    """The certificate authority or a certificate cannot be created or used."""


class WouldOverwriteError(SecurityError):
    """A command would replace a key, certificate or bundle file; pass ``force`` to allow it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists; refusing to overwrite it without --force")
        self.path = path


class CaNotFoundError(PkiError):
    """The CA certificate or key needed to issue a certificate is missing."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no CA at {path}; run `edgefleet pki init` first")
        self.path = path


class CredentialsFileError(SecurityError):
    """A stored broker credentials file is missing or malformed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"broker credentials {path}: {reason}")
        self.path = path
        self.reason = reason


class BrokerAdminError(SecurityError):
    """Talking to the broker's dynamic security plugin failed."""


class BrokerUnreachableError(BrokerAdminError):
    """No connection (or no answer) from the broker: a transport failure, worth a retry."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"broker {url}: {reason}")
        self.url = url
        self.reason = reason


class BrokerAuthError(BrokerAdminError):
    """The broker refused the admin identity (bad credentials or not authorised)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"broker {url} refused the admin identity: {reason}")
        self.url = url
        self.reason = reason


class DynsecCommandError(BrokerAdminError):
    """The dynamic security plugin answered a command with an error."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynamic security command {command!r} failed: {error}")
        self.command = command
        self.error = error


class UnknownDeviceError(SecurityError):
    """The broker has no identity for this device."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is not enrolled on the broker")
        self.device_id = device_id


class DeviceAlreadyEnrolledError(SecurityError):
    """A device already has a broker identity; re-enroll (or revoke first) to replace it."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is already enrolled; use --reenroll or revoke it")
        self.device_id = device_id
