"""``GET /metrics``: Prometheus exposition of the fleet, rollouts and ingest (prometheus-client)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from edgefleet.controller.api.deps import ServiceDep
from edgefleet.controller.metrics import build_registry

router = APIRouter(tags=["metrics"])


def _registry(request: Request, service: ServiceDep) -> CollectorRegistry:
    registry: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = build_registry(service)
        request.app.state.metrics_registry = registry
    return registry


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(request: Request, service: ServiceDep) -> Response:
    """Read at scrape time; a sync route, so the database work runs on a worker thread."""
    return Response(generate_latest(_registry(request, service)), media_type=CONTENT_TYPE_LATEST)
