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
    if not secrets.compare_digest(credentials.credentials.encode(), service.api_token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")


TokenDep = Depends(require_token)
