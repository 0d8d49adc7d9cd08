"""The model registry: SQLAlchemy tables, a content-addressed artifact store, and queries."""

from edgefleet.controller.registry.db import (
    Base,
    create_engine_for,
    create_schema,
    session_factory,
)
from edgefleet.controller.registry.records import (
    ArtifactRecord,
    ArtifactReport,
    LatencyStats,
    ModelSummary,
    NewArtifact,
    QualityStats,
    VersionRecord,
)
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.registry.store import ArtifactStore

__all__ = [
    "ArtifactRecord", "ArtifactReport", "ArtifactStore", "Base", "LatencyStats",
    "ModelRegistry", "ModelSummary", "NewArtifact", "QualityStats", "VersionRecord",
    "create_engine_for", "create_schema", "session_factory",
]  # fmt: skip
