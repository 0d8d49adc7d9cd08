"""The operator dashboard: server-rendered pages (fleet, device, model, rollout) with SVG charts,
refreshed live by a small hand-written script that polls each page's fragment."""

from edgefleet.controller.dashboard.routes import STATIC_DIR, install_dashboard, router

__all__ = ["STATIC_DIR", "install_dashboard", "router"]
