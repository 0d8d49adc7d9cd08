"""Dashboard sessions: the cookie holds its issue time and an HMAC-SHA256 of it keyed with the
API token, never the token itself. Stateless, so it survives a controller restart; a new token
ends every session, and each one ends by itself after the settings' ``session_ttl_s``."""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "edgefleet_session"
_LABEL = b"edgefleet dashboard session v1\x00"
_SKEW_S = 60  # a cookie from a clock this far ahead still counts


def _mac(token: str, issued: int) -> str:
    return hmac.new(token.encode(), _LABEL + str(issued).encode(), hashlib.sha256).hexdigest()


def issue_session(token: str, now: float) -> str:
    """A cookie value for a browser that just presented ``token``."""
    issued = int(now)
    return f"{issued}.{_mac(token, issued)}"


def session_valid(token: str, value: str | None, *, now: float, ttl_s: float) -> bool:
    """Whether ``value`` was issued under ``token`` less than ``ttl_s`` ago (constant-time MAC
    comparison)."""
    if not value or len(value) > 128:
        return False
    issued_text, dot, mac = value.partition(".")
    if not dot or not (issued_text.isascii() and issued_text.isdigit()):
        return False
    issued = int(issued_text)
    if not -_SKEW_S <= now - issued <= ttl_s:
        return False
    return secrets.compare_digest(mac.encode(), _mac(token, issued).encode())
