"""One exception handler: controller errors become 4xx responses with the reason."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edgefleet.controller.errors import ControllerError, ModelNotFoundError, RegistryError
from edgefleet.controller.fleet.selectors import SelectorError
from edgefleet.controller.rollouts.errors import (
    NoDevicesError,
    RolloutConflictError,
    RolloutNotFoundError,
    RolloutStateError,
)
from edgefleet.controller.rollouts.waves import WaveSpecError

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ModelNotFoundError, 404),
    (RolloutNotFoundError, 404),
    (RolloutStateError, 409),
    (RolloutConflictError, 409),
    (NoDevicesError, 422),
    (SelectorError, 422),
    (WaveSpecError, 422),
    (RegistryError, 400),
    (ControllerError, 400),
)


def status_for(error: Exception) -> int:
    return next((code for kind, code in _STATUS if isinstance(error, kind)), 400)


async def _handle(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error), "error": type(error).__name__}, status_for(error))


def install_error_handlers(app: FastAPI) -> None:
    for kind in (ControllerError, SelectorError, WaveSpecError):
        app.add_exception_handler(kind, _handle)
