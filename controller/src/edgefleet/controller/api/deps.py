"""Typed dependencies of the API routes: the service, a database session, the token check."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from edgefleet.controller.service import ControllerService

_bearer = HTTPBearer(auto_error=False)


def get_service(request: Request) -> ControllerService:
    service: ControllerService = request.app.state.service
    return service


ServiceDep = Annotated[ControllerService, Depends(get_service)]


def get_session(service: ServiceDep) -> Iterator[Session]:
    with service.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this call changes state: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(service, credentials.credentials):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")


TokenDep = Depends(require_token)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_COOKIE = "edgefleet_token"  # noqa: S105 - the cookie's name, not a secret


def token_matches(service: ControllerService, presented: str) -> bool:
    return secrets.compare_digest(presented.encode(), service.api_token.encode())


def require_reader(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Read-only routes are open while the API listens on loopback only; otherwise they need
    the token too (bearer header, or the cookie ``/login`` sets for browsers)."""
    if service.settings.http_host in LOOPBACK_HOSTS:
        return
    presented = credentials.credentials if credentials is not None else None
    presented = presented or request.cookies.get(TOKEN_COOKIE)
    if not presented:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the API is bound beyond loopback: send 'Authorization: Bearer <token>' "
            "(browsers: open /login?token=<token> once)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(service, presented):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")


ReaderDep = Depends(require_reader)
