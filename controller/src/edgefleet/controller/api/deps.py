"""Typed dependencies of the API routes: the service, a database session, the token check."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from edgefleet.controller.api.guard import MISSING_TOKEN
from edgefleet.controller.api.sessions import SESSION_COOKIE, session_valid
from edgefleet.controller.http_hosts import is_loopback
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
    """401 without a bearer token, 403 with a wrong one (compared in constant time).

    :class:`~edgefleet.controller.api.guard.ApiGuard` checks the same before the body is read;
    this keeps the rule on the route (and in the OpenAPI document) too.
    """
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, MISSING_TOKEN, headers={"WWW-Authenticate": "Bearer"}
        )
    if not token_matches(service, credentials.credentials):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")


TokenDep = Depends(require_token)


def token_matches(service: ControllerService, presented: str) -> bool:
    return secrets.compare_digest(presented.encode(), service.api_token.encode())


def require_reader(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Read-only routes are open while the API listens on loopback only; otherwise they need
    the token too (bearer header), or the session cookie the ``/login`` form sets."""
    settings = service.settings
    if is_loopback(settings.http_host):
        return
    if credentials is not None:
        if not token_matches(service, credentials.credentials):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")
        return
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the API is bound beyond loopback: send 'Authorization: Bearer <token>' "
            "(browsers: sign in with the form at /login)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not session_valid(service.api_token, cookie, now=time.time(), ttl_s=settings.session_ttl_s):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the dashboard session is over or was not issued for this token: "
            "sign in again at /login",
            headers={"WWW-Authenticate": "Bearer"},
        )


ReaderDep = Depends(require_reader)
