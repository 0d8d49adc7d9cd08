"""Where the controller keeps its CA, broker credentials and signing key (one place to move them).

Library code takes these paths as parameters; only CLI commands derive them from the settings'
``data_dir`` through :func:`default_paths`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.controller.config import get_settings

BROKER_PUBLIC_URL_ENV = "EDGEFLEET_BROKER_PUBLIC_URL"


@dataclass(frozen=True, slots=True)
class SecurityPaths:
    """The security files under one data directory."""

    data_dir: Path
    signing_key_file: Path | None = None  # the settings' signing_key_path, when set

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.pki_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.pki_dir / "server.key"

    @property
    def signing_key(self) -> Path:
        return self.signing_key_file or self.data_dir / "keys" / "signing.key"

    @property
    def signing_pub(self) -> Path:
        return self.signing_key.with_suffix(".pub")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def admin_credentials(self) -> Path:
        """The dynamic-security admin identity (JSON, 0600)."""
        return self.broker_dir / "admin.json"

    @property
    def controller_credentials(self) -> Path:
        """The controller's own broker identity (JSON, 0600)."""
        return self.broker_dir / "controller.json"

    @property
    def dynsec_bootstrap(self) -> Path:
        """First dynamic-security config, to copy where the broker's plugin reads it."""
        return self.broker_dir / "dynamic-security.json"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"

    def bundle_dir(self, device_id: str) -> Path:
        return self.bundles_dir / device_id


def default_paths(data_dir: Path | None = None) -> SecurityPaths:
    """Paths under ``data_dir``, or under the controller settings' ``data_dir``."""
    settings = get_settings(data_dir=data_dir) if data_dir is not None else get_settings()
    return SecurityPaths(settings.data_dir, settings.signing_key_path)


def default_topic_root() -> str:
    """The controller settings' topic root."""
    return get_settings().topic_root


def broker_public_url() -> str | None:
    """URL devices use to reach the broker, when set in the environment."""
    return os.environ.get(BROKER_PUBLIC_URL_ENV) or None
