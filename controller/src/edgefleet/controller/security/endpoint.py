"""How a client reaches the broker: URL, pinned CA, optional client certificate, credentials.

One object the controller, the admin tooling and tests all use to build a paho client or an
``ssl.SSLContext`` (aiomqtt takes the context as ``tls_context=``).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from edgefleet.controller.security._filewrite import SECRET_MODE, write_file
from edgefleet.controller.security.errors import CredentialsFileError, SecurityError


@dataclass(frozen=True, slots=True)
class BrokerCredentials:
    """A broker username and password (the password stays out of ``repr``)."""

    username: str
    password: str = field(repr=False)

    def save(self, path: Path) -> None:
        """Write the credentials as JSON with mode 0600."""
        body = {"username": self.username, "password": self.password}
        write_file(path, (json.dumps(body, indent=2) + "\n").encode(), SECRET_MODE)

    @classmethod
    def load(cls, path: Path) -> BrokerCredentials:
        """Read credentials written by :meth:`save`.

        Raises:
            CredentialsFileError: missing, unreadable or malformed.
        """
        try:
            body = json.loads(path.read_text())
            return cls(username=str(body["username"]), password=str(body["password"]))
        except FileNotFoundError:
            raise CredentialsFileError(path, "file not found") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CredentialsFileError(path, f"unreadable: {e}") from e


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """Everything a client needs to connect to the broker.

    ``mqtts://`` URLs verify the broker certificate (chain and host name) against ``ca_file``
    when given, the system store otherwise; ``mqtt://`` is meant for loopback only.
    """

    url: str
    credentials: BrokerCredentials | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise SecurityError(f"broker URL {self.url!r} must look like mqtt(s)://host:port")
        if (self.cert_file is None) != (self.key_file is None):
            raise SecurityError("a client certificate needs both cert_file and key_file")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context pinned to ``ca_file`` (TLS 1.2+, host name checked); None for mqtt://.

        Raises:
            SecurityError: a CA or client certificate file cannot be loaded.
        """
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as e:
            raise SecurityError(f"cannot load TLS files for {self.url}: {e}") from e
        return context

    def configure(self, client: mqtt.Client) -> None:
        """Apply credentials and TLS settings to a paho client (before ``connect``)."""
        if self.credentials is not None:
            client.username_pw_set(self.credentials.username, self.credentials.password)
        context = self.ssl_context()
        if context is not None:
            client.tls_set_context(context)
