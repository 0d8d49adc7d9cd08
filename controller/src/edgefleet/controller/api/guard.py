"""The API's outer guard, a pure ASGI middleware that answers before any route reads a byte of
the body: unknown ``Host`` names get 421, state-changing calls without the right bearer token
401/403, bodies over the limit 413 (at once when ``Content-Length`` says so, otherwise as soon as
the streamed bytes pass it, and the connection is closed rather than drained).

Refusals use the API's error shape ``{"detail": ..., "error": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterable
from typing import ClassVar

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.http_hosts import HostAllowList

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MISSING_TOKEN = "this call changes state: send 'Authorization: Bearer <token>'"  # noqa: S105


class RequestRefusedError(ControllerError):
    """A request the guard answers itself; ``status`` is the HTTP status it gets."""

    status: ClassVar[int] = 400
    headers: tuple[tuple[bytes, bytes], ...] = ()


class HostNotAllowedError(RequestRefusedError):
    """The ``Host`` header names a host this API does not serve (e.g. a rebound DNS name)."""

    status = 421

    def __init__(self, host: str | None, allowed: HostAllowList) -> None:
        shown = repr(host[:100]) if host else "no Host header"
        super().__init__(
            f"this API does not serve {shown}: it answers to {allowed} "
            "(add names with the http_allowed_hosts setting or --allowed-host)"
        )
        self.host = host


class BodyTooLargeError(RequestRefusedError):
    """The request body is over the settings' ``http_max_body_bytes``."""

    status = 413

    def __init__(self, limit: int, declared: int | None) -> None:
        said = f" (Content-Length {declared})" if declared is not None else ""
        super().__init__(f"request body over the limit of {limit} bytes{said}")
        self.limit = limit
        self.declared = declared


class BadContentLengthError(RequestRefusedError):
    """``Content-Length`` is not a non-negative integer."""

    def __init__(self, value: str) -> None:
        super().__init__(f"bad Content-Length {value[:40]!r}")


class TokenMissingError(RequestRefusedError):
    """A state-changing call without a bearer token."""

    status = 401
    headers = ((b"www-authenticate", b"Bearer"),)

    def __init__(self) -> None:
        super().__init__(MISSING_TOKEN)


class TokenWrongError(RequestRefusedError):
    """A state-changing call with a bearer token that is not the API token."""

    status = 403

    def __init__(self) -> None:
        super().__init__("wrong API token")


class ControllerStartingError(RequestRefusedError):
    """A state-changing call before the service has its token (during startup)."""

    status = 503

    def __init__(self) -> None:
        super().__init__("the controller is starting; try again in a moment")


class _BodyLimitReachedError(Exception):
    """Raised into the app from ``receive`` once the body passed the limit (413 already sent)."""


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def token_refusal(presented: str | None, token: str | None) -> RequestRefusedError | None:
    """Why ``presented`` does not authorise a state change, or None (constant-time compare)."""
    if presented is None:
        return TokenMissingError()
    if token is None:
        return ControllerStartingError()
    if not secrets.compare_digest(presented.encode(), token.encode()):
        return TokenWrongError()
    return None


async def send_refusal(send: Send, error: RequestRefusedError, *, close: bool) -> None:
    """Answer with ``error`` in the API's error shape; ``close`` ends the connection after it."""
    body = json.dumps({"detail": str(error), "error": type(error).__name__}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *error.headers,
    ]
    if close:  # an unread body stays on the wire: do not read it to reach the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiGuard:
    """Host check, token-before-body for state-changing methods, and the body size cap.

    Args:
        app: the application it wraps.
        hosts: the ``Host`` names served.
        max_body_bytes: the largest request body read.
        token: the current API token (None until the service has started).
        open_paths: paths whose state-changing methods need no bearer token (the login form).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: HostAllowList,
        max_body_bytes: int,
        token: Callable[[], str | None],
        open_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes
        self.token = token
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not self.hosts.allows(host):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            refused = HostNotAllowedError(host, self.hosts)
            await send_refusal(send, refused, close=_has_body(headers))
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await send_refusal(send, refusal, close=_has_body(headers))
            return
        cap = _CappedBody(receive, send, self.max_body_bytes)
        # On the limit the 413 goes out from cap.receive, and the app's own answer is dropped.
        with contextlib.suppress(_BodyLimitReachedError):
            await self.app(scope, cap.receive, cap.send)

    def _refusal(self, scope: Scope, headers: Headers) -> RequestRefusedError | None:
        if scope["method"] not in SAFE_METHODS and scope["path"] not in self.open_paths:
            refused = token_refusal(bearer_token(headers.get("authorization")), self.token())
            if refused is not None:
                return refused
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                return BadContentLengthError(declared)
            if int(declared) > self.max_body_bytes:
                return BodyTooLargeError(self.max_body_bytes, int(declared))
        return None


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class _CappedBody:
    """Counts body bytes as the app receives them; past the limit it answers 413 itself, ends
    the connection, and drops whatever the app sends after."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.received = 0
        self.started = False
        self.refused = False

    async def receive(self) -> Message:
        if self.refused:
            raise _BodyLimitReachedError
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = True
                if not self.started:
                    await send_refusal(self._send, BodyTooLargeError(self.limit, None), close=True)
                raise _BodyLimitReachedError
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
