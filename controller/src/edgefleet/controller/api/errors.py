"""The API's exception handlers: every error, whoever raises it, answers one shape,
:class:`~edgefleet.controller.api.schemas.ErrorBody` (``{"detail": ..., "error": ...}``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException
from starlette.routing import Match

from edgefleet.controller.api.schemas import (
    DEVICE_ID_PATTERN,
    MAX_FAILURES_PATTERN,
    NO_NUL_PATTERN,
    SELECTOR_PATTERN,
    SHA256_PATTERN,
    WAVES_PATTERN,
    ErrorBody,
    ValidationProblem,
)
from edgefleet.controller.errors import ControllerError, ModelNotFoundError, RegistryError
from edgefleet.controller.fleet.selectors import SelectorError
from edgefleet.controller.rollouts.errors import (
    NoDevicesError,
    RolloutConflictError,
    RolloutNotFoundError,
    RolloutStateError,
)
from edgefleet.controller.rollouts.waves import WaveSpecError

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ModelNotFoundError, 404),
    (RolloutNotFoundError, 404),
    (RolloutStateError, 409),
    (RolloutConflictError, 409),
    (NoDevicesError, 404),  # like a missing model: what the request names does not exist
    (SelectorError, 422),
    (WaveSpecError, 422),
    (RegistryError, 400),
    (ControllerError, 400),
)

# Stable names for the statuses routes and middleware raise without a domain error.
_HTTP_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "ContentTooLarge",
    416: "RangeNotSatisfiable",
    422: "UnprocessableContent",
    429: "TooManyRequests",
}

# A pattern mismatch says what the format is, not the regular expression.
_PATTERN_HINTS = {
    SELECTOR_PATTERN: "bad selector term in {value}: expected key=value or key!=value terms, "
    "comma-separated, or *",
    WAVES_PATTERN: "bad wave in {value}: use counts like 1 or percentages like 10%, "
    "comma-separated",
    MAX_FAILURES_PATTERN: "max failures {value} is not a count (3) or a percentage (10%)",
    DEVICE_ID_PATTERN: "{value} is not a device id: up to 64 letters, digits, '.', '_' or '-', "
    "starting with a letter or digit",
    SHA256_PATTERN: "{value} is not a sha256: 64 lowercase hex digits",
    NO_NUL_PATTERN: "String should not contain NUL",
}
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_PROBLEMS = 20  # a body may break many rules; the answer stays small


class ApiError(HTTPException):
    """An HTTP error a route raises itself, with the name its body carries."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        error: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail, headers=dict(headers) if headers else None)
        self.error = error


def device_not_found(device_id: str) -> ApiError:
    return ApiError(404, f"no device {device_id!r}", error="DeviceNotFoundError")


def status_for(error: Exception) -> int:
    return next((code for kind, code in _STATUS if isinstance(error, kind)), 400)


def http_error_name(status_code: int) -> str:
    """``NotFound`` for 404: the status's name, as the ``error`` of a body."""
    if status_code in _HTTP_NAMES:
        return _HTTP_NAMES[status_code]
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return f"Http{status_code}"
    return "".join(word.capitalize() for word in phrase.replace("-", " ").split() if word.isalpha())


def error_response(
    status_code: int,
    detail: str,
    error: str,
    *,
    problems: Sequence[ValidationProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An :class:`ErrorBody` response; the one way this API answers an error."""
    body = ErrorBody(detail=detail, error=error, problems=list(problems) if problems else None)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code,
        headers=dict(headers) if headers else None,
    )


def problem_of(raw: Mapping[str, Any]) -> ValidationProblem:
    """One pydantic error as the API states it: where, and what was wrong in words."""
    where = ".".join(str(part) for part in raw.get("loc", ()))
    message = str(raw.get("msg", "invalid"))
    ctx = raw.get("ctx") or {}
    hint = _PATTERN_HINTS.get(ctx.get("pattern", "")) if isinstance(ctx, Mapping) else None
    if hint is not None:
        value = raw.get("input")
        if isinstance(value, str) and len(value) > 80:
            value = value[:77] + "..."
        shown = repr(value)
        message = hint.format(value=shown)
    return ValidationProblem(where=where, message=message, type=str(raw.get("type", "invalid")))


async def _controller_error(request: Request, error: Exception) -> Response:
    return error_response(status_for(error), str(error), type(error).__name__)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path, found the way the router dispatches
    (Starlette's 405 names only the first route's, though ``GET`` and ``POST /api/rollouts``
    are two routes)."""
    allowed = []
    for method in _HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    headers = getattr(error, "headers", None)
    methods = allowed_methods(request) if error.status_code == 405 else []
    if methods:
        headers = {**(headers or {}), "Allow": ", ".join(methods)}
    if not is_body_allowed_for_status_code(error.status_code):
        return Response(status_code=error.status_code, headers=headers)
    name = getattr(error, "error", None) or http_error_name(error.status_code)
    return error_response(error.status_code, str(error.detail), name, headers=headers)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    raw = list(error.errors())
    problems = [problem_of(e) for e in raw[:MAX_PROBLEMS]]
    detail = "; ".join(f"{p.where}: {p.message}" if p.where else p.message for p in problems[:5])
    if len(raw) > 5:
        detail += f"; and {len(raw) - 5} more"
    detail = detail or "invalid request"
    return error_response(422, detail, "RequestValidationError", problems=problems)


async def _internal_error(request: Request, error: Exception) -> Response:
    # Starlette's ServerErrorMiddleware still re-raises, so the server logs the traceback.
    log.error("unhandled %s on %s %s", type(error).__name__, request.method, request.url.path)
    detail = "internal error; the controller log has the details"
    return error_response(500, detail, "InternalError")


def install_error_handlers(app: FastAPI) -> None:
    """Controller errors, HTTP errors, request validation and anything unhandled: one shape."""
    for kind in (ControllerError, SelectorError, WaveSpecError):
        app.add_exception_handler(kind, _controller_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
