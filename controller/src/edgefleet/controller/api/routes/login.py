"""``/login?token=...``: lets a browser open the dashboard when the API is not on loopback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import RedirectResponse

from edgefleet.controller.api.deps import TOKEN_COOKIE, ServiceDep, token_matches

router = APIRouter(tags=["auth"])


@router.get("/login")
def login(service: ServiceDep, token: Annotated[str, Query(max_length=256)]) -> RedirectResponse:
    if not token_matches(service, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")
    response = RedirectResponse("/dashboard", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return response
