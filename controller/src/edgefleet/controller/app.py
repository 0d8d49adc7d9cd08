"""The FastAPI application factory: builds the service from settings and runs it in lifespan."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from edgefleet.controller import __version__
from edgefleet.controller.api.access_log import install_access_log_redaction
from edgefleet.controller.api.deps import ReaderDep
from edgefleet.controller.api.errors import install_error_handlers
from edgefleet.controller.api.guard import ApiGuard
from edgefleet.controller.api.openapi import install_openapi
from edgefleet.controller.api.routes import (
    artifacts,
    devices,
    fleet,
    login,
    metrics,
    models,
    rollouts,
    telemetry,
)
from edgefleet.controller.config import Settings
from edgefleet.controller.dashboard import install_dashboard
from edgefleet.controller.http_hosts import served_hosts
from edgefleet.controller.service import ControllerService

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """An app whose lifespan starts and stops one :class:`ControllerService`, behind the
    :class:`ApiGuard` (Host names, token before body, body size).

    Raises:
        HostNameError: an entry of ``http_allowed_hosts`` or ``public_url`` is malformed.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_access_log_redaction()  # after the server set up its logging
        service = ControllerService(settings)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            started = time.monotonic()
            await service.stop()
            log.info("controller stopped (its shutdown took %.1f s)", time.monotonic() - started)

    app = FastAPI(title="edgefleet controller", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    # Reads are open on loopback only; writes always need the token (TokenDep on each route).
    for module in (devices, rollouts, models, fleet, telemetry, metrics):
        app.include_router(module.router, dependencies=[ReaderDep])
    app.include_router(artifacts.router)
    app.include_router(login.router)
    install_dashboard(app, dependencies=[ReaderDep])

    def current_token() -> str | None:
        service: ControllerService | None = getattr(app.state, "service", None)
        return service.api_token if service is not None else None

    app.add_middleware(
        ApiGuard,
        hosts=served_hosts(settings.http_host, settings.http_allowed_hosts, settings.public_url),
        max_body_bytes=settings.http_max_body_bytes,
        token=current_token,
        open_paths=["/login"],
    )
    install_openapi(app)
    return app
