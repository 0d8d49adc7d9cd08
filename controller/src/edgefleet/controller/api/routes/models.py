"""Models, versions and their artifacts with compression reports; artifact downloads."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.controller.api.deps import ServiceDep
from edgefleet.controller.api.schemas import ArtifactPublic, ModelPublic, VersionPublic
from edgefleet.controller.registry.records import VersionRecord

router = APIRouter(tags=["models"])


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


@router.get("/api/models", response_model=list[ModelPublic])
def list_models(service: ServiceDep) -> list[ModelPublic]:
    return [
        ModelPublic(name=m.name, versions=list(m.versions), created_at=m.created_at)
        for m in service.registry.list_models()
    ]


@router.get("/api/models/{name}/versions/{version}", response_model=VersionPublic)
def get_version(name: str, version: str, service: ServiceDep) -> VersionPublic:
    return version_public(service.registry.get_version(name, version))
