"""Which ``Host`` names the controller's HTTP API answers to: parsing ``Host`` headers and the
allow list (exact names, ``name:port``, ``*.domain``), with the loopback names always on it.

A page on another site that rebinds its DNS name to the controller's address still sends its own
name as ``Host``; answering only to known names keeps such a page from reading the fleet.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*")
_PORT = re.compile(r"[0-9]{1,5}")


class HostNameError(ValueError):
    """A ``Host`` header or allow-list entry that is not ``name[:port]``."""


@dataclass(frozen=True, slots=True)
class HostName:
    """A normalised host: lower case, no trailing dot, IPv6 without brackets, optional port."""

    name: str
    port: int | None = None

    def __str__(self) -> str:
        name = f"[{self.name}]" if ":" in self.name else self.name
        return name if self.port is None else f"{name}:{self.port}"


def _normal_name(raw: str, *, wildcard: bool) -> str:
    name = raw.lower().rstrip(".")
    try:
        return ipaddress.IPv6Address(name).compressed
    except ValueError:
        pass
    body = name[2:] if wildcard and name.startswith("*.") else name
    if not _NAME.fullmatch(body) or len(body) > 253:
        raise HostNameError(f"{raw!r} is not a host name or address")
    return name


def _port(raw: str, whole: str) -> int:
    if not _PORT.fullmatch(raw) or not 0 < int(raw) <= 65535:
        raise HostNameError(f"bad port in {whole!r}")
    return int(raw)


def parse_host(value: str, *, pattern: bool = False) -> HostName:
    """Split a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``) into a
    :class:`HostName`; an allow-list entry (``pattern``) may also be ``*.domain`` or a bare IPv6
    address.

    Raises:
        HostNameError: anything else.
    """
    text = value.strip()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise HostNameError(f"{value!r} is not [address]:port")
        try:
            name = ipaddress.IPv6Address(inside).compressed
        except ValueError:
            raise HostNameError(f"{inside!r} is not an IPv6 address") from None
        return HostName(name, _port(rest[1:], value) if rest else None)
    if text.count(":") > 1:
        if not pattern:
            raise HostNameError(f"{value!r}: an IPv6 address in a Host header needs brackets")
        return HostName(_normal_name(text, wildcard=False))
    name, colon, port = text.partition(":")
    return HostName(_normal_name(name, wildcard=pattern), _port(port, value) if colon else None)


class HostAllowList:
    """The names the API serves; an entry without a port allows any port."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.patterns = tuple(dict.fromkeys(parse_host(entry, pattern=True) for entry in entries))

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        try:
            host = parse_host(header)
        except HostNameError:
            return False
        return any(_matches(pattern, host) for pattern in self.patterns)

    def __str__(self) -> str:
        return ", ".join(str(pattern) for pattern in self.patterns)


def _matches(pattern: HostName, host: HostName) -> bool:
    if pattern.port is not None and pattern.port != host.port:
        return False
    if pattern.name.startswith("*."):
        suffix = pattern.name[1:]
        return host.name.endswith(suffix) and len(host.name) > len(suffix)
    return pattern.name == host.name


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def served_hosts(
    bind: str, configured: Iterable[str], public_url: str | None = None
) -> HostAllowList:
    """The loopback names, the ``configured`` ones, the bind address unless it is a wildcard,
    and ``public_url``'s host (devices download artifacts there).

    Raises:
        HostNameError: a configured entry is malformed.
    """
    names = [*LOOPBACK_NAMES, *configured]
    if bind.strip("[]") not in WILDCARD_BINDS:
        names.append(bind)
    if public_url and (public := urlsplit(public_url).hostname):
        names.append(public)
    return HostAllowList(names)
