"""Where the broker admin password may go: only to the broker the controller's configuration
names (``broker_admin_url``, else ``broker_url``), over TLS unless that broker is on loopback and
its URL says plain ``mqtt://``.

Another URL needs the operator's explicit ``--trust-unconfigured-admin-url`` (a second broker on
this machine may hold the usual port); plain text beyond loopback is refused whatever the flag.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from edgefleet.controller.http_hosts import is_loopback
from edgefleet.controller.security.errors import SecurityError

TRUST_FLAG = "--trust-unconfigured-admin-url"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class AdminUrlRefusedError(SecurityError):
    """The broker admin password would go where it must not: a broker the configuration does
    not name, or any broker beyond loopback in plain text."""

    def __init__(self, url: str | None, reason: str) -> None:
        where = f"broker admin URL {url!r}" if url else "broker admin URL"
        super().__init__(f"refusing to send the admin password: {where}: {reason}")
        self.url = url
        self.reason = reason


def _endpoint(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise AdminUrlRefusedError(url, "bad port") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise AdminUrlRefusedError(url, "it must look like mqtts://host:port")
    return parts.scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[parts.scheme]


def check_admin_transport(url: str) -> None:
    """Raise unless ``url`` is ``mqtts://`` or plain ``mqtt://`` to a loopback host.

    Raises:
        AdminUrlRefusedError: the URL is malformed or plain text beyond loopback.
    """
    scheme, host, _ = _endpoint(url)
    if scheme == "mqtt" and not is_loopback(host):
        raise AdminUrlRefusedError(
            url,
            f"plain mqtt:// would carry the password in clear text to {host}, beyond this "
            "machine; use the broker's TLS listener (mqtts://)",
        )


def admin_url_for(
    requested: str | None,
    *,
    configured_admin: str | None,
    configured_broker: str | None,
    trust_unconfigured: bool = False,
) -> str:
    """The URL to send the admin password to.

    Args:
        requested: ``--admin-url``, if given.
        configured_admin: the settings' ``broker_admin_url``.
        configured_broker: the settings' ``broker_url``.
        trust_unconfigured: the operator's explicit consent to a ``requested`` URL that the
            configuration does not name.

    Raises:
        AdminUrlRefusedError: nothing is configured and nothing requested; the requested URL is
            not a configured one and not trusted; or the URL is plain text beyond loopback.
    """
    configured = [url for url in (configured_admin, configured_broker) if url]
    if requested is None:
        if not configured:
            raise AdminUrlRefusedError(
                None,
                "the controller's configuration names no broker: set broker_admin_url "
                "(EDGEFLEET_BROKER_ADMIN_URL, e.g. mqtt://127.0.0.1:1883 for the broker's "
                "loopback listener) or broker_url (EDGEFLEET_BROKER_URL)",
            )
        check_admin_transport(configured[0])
        return configured[0]
    check_admin_transport(requested)
    known = {_endpoint(candidate) for candidate in configured}
    if _endpoint(requested) not in known and not trust_unconfigured:
        named = ", ".join(configured) or "none"
        raise AdminUrlRefusedError(
            requested,
            f"it is not the broker the controller's configuration names ({named}); set "
            f"broker_admin_url to it, or pass {TRUST_FLAG} if you mean this broker",
        )
    return requested
