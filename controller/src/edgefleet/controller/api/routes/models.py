"""Models, versions and their artifacts with compression reports; artifact downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from edgefleet.controller.api.deps import ServiceDep
from edgefleet.controller.api.openapi import OPEN_ON_LOOPBACK, error_responses
from edgefleet.controller.api.schemas import (
    NO_NUL_PATTERN,
    ArtifactPublic,
    ModelPublic,
    VersionPublic,
)
from edgefleet.controller.registry.records import VersionRecord

router = APIRouter(tags=["models"], responses=error_responses(400, 401, 403))
NamePath = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_NUL_PATTERN)]
VersionPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL_PATTERN)]


def version_public(record: VersionRecord) -> VersionPublic:
    return VersionPublic(
        model=record.model,
        version=record.version,
        created_at=record.created_at,
        summary=record.summary,
        artifacts=[
            ArtifactPublic(
                target=a.target,
                runtime=a.runtime,
                sha256=a.sha256,
                size=a.size,
                latency_budget_ms=a.latency_budget_ms,
                report=a.report.model_dump(mode="json"),
            )
            for a in record.artifacts
        ],
    )


@router.get("/api/models", response_model=list[ModelPublic], openapi_extra=OPEN_ON_LOOPBACK)
def list_models(service: ServiceDep) -> list[ModelPublic]:
    """Every registered model and its versions."""
    return [
        ModelPublic(name=m.name, versions=list(m.versions), created_at=m.created_at)
        for m in service.registry.list_models()
    ]


@router.get(
    "/api/models/{name}/versions/{version}",
    response_model=VersionPublic,
    responses=error_responses(404, 422, descriptions={404: "no such model version"}),
    openapi_extra=OPEN_ON_LOOPBACK,
)
def get_version(name: NamePath, version: VersionPath, service: ServiceDep) -> VersionPublic:
    """One model version: its artifacts and their compression reports."""
    return version_public(service.registry.get_version(name, version))
