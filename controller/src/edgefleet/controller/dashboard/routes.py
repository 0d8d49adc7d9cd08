"""Dashboard routes: each page is served whole, or with ``?fragment=1`` only its live part, which
the page's script fetches again every few seconds. Read-only; no token needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from edgefleet.controller.api.deps import ServiceDep, SessionDep
from edgefleet.controller.dashboard.device_page import render_device
from edgefleet.controller.dashboard.fleet_page import render_fleet
from edgefleet.controller.dashboard.html import e, link, page
from edgefleet.controller.dashboard.model_page import render_model, render_models
from edgefleet.controller.dashboard.rollout_page import render_rollout, render_rollouts
from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.rollouts.tables import RolloutRow

STATIC_DIR = Path(__file__).parent / "static"
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(include_in_schema=False)
Fragment = Annotated[bool, Query(description="only the live part of the page")]


def _respond(
    service: ServiceDep, title: str, live: str, fragment: bool, crumbs: str = ""
) -> HTMLResponse:
    if fragment:
        return HTMLResponse(live, headers=NO_STORE)
    body = page(title, live, refresh_s=service.settings.dashboard_refresh_s, crumbs=crumbs)
    return HTMLResponse(body, headers=NO_STORE)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard", response_class=HTMLResponse)
def fleet_page(
    service: ServiceDep, session: SessionDep, fragment: Fragment = False
) -> HTMLResponse:
    return _respond(service, "Fleet", render_fleet(service, session), fragment)


@router.get("/dashboard/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    device_id: str,
    service: ServiceDep,
    session: SessionDep,
    minutes: Annotated[int | None, Query(ge=1, le=400 * 1440)] = None,
    fragment: Fragment = False,
) -> HTMLResponse:
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise HTTPException(404, f"no device {device_id!r}")
    live = render_device(service, session, device, minutes)
    return _respond(service, device_id, live, fragment, f"device {e(device_id)}")


@router.get("/dashboard/models", response_class=HTMLResponse)
def models_page(
    service: ServiceDep, session: SessionDep, fragment: Fragment = False
) -> HTMLResponse:
    return _respond(service, "Models", render_models(service, session), fragment)


@router.get("/dashboard/models/{name}", response_class=HTMLResponse)
def model_page(
    name: str, service: ServiceDep, session: SessionDep, fragment: Fragment = False
) -> HTMLResponse:
    live = render_model(service, session, name)
    crumbs = f"{link('models', 'models')} / {e(name)}"
    return _respond(service, name, live, fragment, crumbs)


@router.get("/dashboard/rollouts", response_class=HTMLResponse)
def rollouts_page(
    service: ServiceDep, session: SessionDep, fragment: Fragment = False
) -> HTMLResponse:
    return _respond(service, "Rollouts", render_rollouts(session), fragment)


@router.get("/dashboard/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(
    rollout_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
    service: ServiceDep,
    session: SessionDep,
    fragment: Fragment = False,
) -> HTMLResponse:
    rollout = session.get(RolloutRow, rollout_id)
    if rollout is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    live = render_rollout(session, rollout)
    return _respond(service, f"Rollout #{rollout_id}", live, fragment, f"rollout #{rollout_id}")


def install_dashboard(app: FastAPI, dependencies: Sequence[Any] = ()) -> None:
    """Add the pages and serve the script, stylesheet and icon from the package."""
    app.include_router(router, dependencies=list(dependencies))
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
