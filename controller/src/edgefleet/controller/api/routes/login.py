"""``/login``: a browser signs in to the dashboard with a form POST of the API token and gets a
session cookie derived from it. The token never goes in a URL: ``GET /login?token=...`` signs
nobody in."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.controller.api.deps import ServiceDep, token_matches
from edgefleet.controller.api.sessions import SESSION_COOKIE, issue_session
from edgefleet.controller.config import Settings
from edgefleet.controller.dashboard.login_page import render_login
from edgefleet.controller.http_hosts import is_loopback

router = APIRouter(tags=["auth"])
MAX_FORM_BYTES = 4096
FORM_TYPE = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}  # no framing of the form
# The form as OpenAPI says it (the route reads the bytes itself, capped at MAX_FORM_BYTES).
LOGIN_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            FORM_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["token"],
                    "additionalProperties": False,
                    "properties": {
                        "token": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 256,
                            "pattern": "[!-~]",  # something besides blanks: they are stripped
                        }
                    },
                }
            }
        },
    }
}
TOKEN_IN_URL = (
    "A token in the URL was ignored: it would end up in logs and browser history. "  # noqa: S105
    "Type it into this form instead."
)


def cookie_secure(settings: Settings) -> bool:
    """The session cookie is ``Secure`` unless the API is on loopback over plain HTTP."""
    public_https = (settings.public_url or "").lower().startswith("https://")
    return public_https or not is_loopback(settings.http_host)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, service: ServiceDep) -> HTMLResponse:
    """The sign-in form (a token in the query string is ignored, and said so)."""
    message = TOKEN_IN_URL if "token" in request.query_params else None
    html = render_login(message=message, loopback=is_loopback(service.settings.http_host))
    return HTMLResponse(html, headers=NO_STORE)


async def _form_token(request: Request) -> str:
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_FORM_BYTES:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"login form over {MAX_FORM_BYTES} bytes"
            )
    try:
        fields = parse_qs(received.decode(), max_num_fields=8)
    except (UnicodeDecodeError, ValueError) as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unreadable login form: {e}") from e
    token = (fields.get("token") or [""])[0].strip()
    if not token:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the form has no 'token' field")
    return token


@router.post(
    "/login",
    status_code=status.HTTP_303_SEE_OTHER,
    response_class=RedirectResponse,
    openapi_extra=LOGIN_FORM,
    responses={
        303: {"description": "signed in: the session cookie is set; on to /dashboard"},
        403: {"description": "wrong API token"},
        415: {"description": f"the body is not {FORM_TYPE}"},
    },
)
async def login(request: Request, service: ServiceDep) -> Response:
    """Check the form's ``token`` field; on a match set the session cookie (``HttpOnly``,
    ``SameSite=Strict``, ``Secure`` off loopback) and redirect to the dashboard."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != FORM_TYPE:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"send the login form as {FORM_TYPE}"
        )
    token = await _form_token(request)
    if not token_matches(service, token):
        if "text/html" in request.headers.get("accept", ""):
            page = render_login(message="Wrong API token.")
            return HTMLResponse(page, status.HTTP_403_FORBIDDEN, headers=NO_STORE)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")
    settings = service.settings
    response = RedirectResponse("/dashboard", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        issue_session(service.api_token, time.time()),
        max_age=int(settings.session_ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(settings),
    )
    return response
