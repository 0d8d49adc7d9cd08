"""``GET /metrics``: Prometheus exposition of the fleet, rollouts and ingest (prometheus-client)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from edgefleet.controller.api.deps import ServiceDep
from edgefleet.controller.api.openapi import OPEN_ON_LOOPBACK, error_responses
from edgefleet.controller.metrics import build_registry

router = APIRouter(tags=["metrics"], responses=error_responses(400, 401, 403))
_EXPOSITION = {"text/plain": {"schema": {"type": "string"}}}


def _registry(request: Request, service: ServiceDep) -> CollectorRegistry:
    registry: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = build_registry(service)
        request.app.state.metrics_registry = registry
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text exposition", "content": _EXPOSITION}},
    openapi_extra=OPEN_ON_LOOPBACK,
)
def metrics(request: Request, service: ServiceDep) -> Response:
    """Fleet, rollout and ingest metrics for Prometheus."""
    # Read at scrape time; a sync route, so the database work runs on a worker thread.
    return Response(generate_latest(_registry(request, service)), media_type=CONTENT_TYPE_LATEST)
