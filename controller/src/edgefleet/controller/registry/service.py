"""The model registry: register versions with their artifacts, and answer queries about them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy.exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.config import Settings
from edgefleet.controller.errors import ModelNotFoundError, RegistryError, VersionExistsError
from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory
from edgefleet.controller.registry.records import (
    ArtifactRecord,
    ArtifactReport,
    ModelSummary,
    NewArtifact,
    VersionRecord,
)
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.registry.tables import ArtifactRow, ModelRow, ModelVersionRow
from edgefleet.shared.manifest import GoldenSet, IOSignature, runtime_for_target


class ModelRegistry:
    """Models, versions and artifacts in the database; artifact bytes in the content store."""

    def __init__(self, sessions: sessionmaker[Session], store: ArtifactStore) -> None:
        self._sessions = sessions
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """A registry on ``settings.database_url`` (SQLite in the data dir by default)."""
        engine = create_engine_for(settings.effective_database_url)
        create_schema(engine)
        return cls(session_factory(engine), ArtifactStore(settings.artifact_dir))

    def has_version(self, name: str, version: str) -> bool:
        with self._sessions() as session:
            return _find_version(session, name, version) is not None

    def register_version(
        self,
        name: str,
        version: str,
        *,
        source_sha256: str,
        source_size: int,
        recipe: dict[str, Any],
        summary: dict[str, Any],
        artifacts: Sequence[NewArtifact],
    ) -> VersionRecord:
        """Store every artifact file, then record the version and its artifacts in one transaction.

        Raises:
            VersionExistsError: ``name:version`` is already registered.
            RegistryError: two artifacts share a target, or there are none.
        """
        if not artifacts:
            raise RegistryError(f"{name}:{version}: nothing to register")
        targets = [a.target for a in artifacts]
        if len(set(targets)) != len(targets):
            raise RegistryError(f"{name}:{version}: duplicate targets {targets}")
        if self.has_version(name, version):
            raise VersionExistsError(name, version)
        stored = [self.store.put_file(a.file) for a in artifacts]
        try:
            self._insert_version(name, version, source_sha256, source_size, recipe, summary,
                                 artifacts, stored)  # fmt: skip
        except sqlalchemy.exc.IntegrityError as e:
            # another controller registered the same version between the check and the insert;
            # the blobs stay: they are content-addressed and may be shared
            raise VersionExistsError(name, version) from e
        return self.get_version(name, version)

    def _insert_version(
        self,
        name: str,
        version: str,
        source_sha256: str,
        source_size: int,
        recipe: dict[str, Any],
        summary: dict[str, Any],
        artifacts: Sequence[NewArtifact],
        stored: list[tuple[str, int]],
    ) -> None:
        with self._sessions.begin() as session:
            model = session.scalar(select(ModelRow).where(ModelRow.name == name))
            if model is None:
                model = ModelRow(name=name)
                session.add(model)
            row = ModelVersionRow(
                model=model,
                version=version,
                source_sha256=source_sha256,
                source_size=source_size,
                recipe=recipe,
                summary=summary,
            )
            for art, (sha, size) in zip(artifacts, stored, strict=True):
                row.artifacts.append(
                    ArtifactRow(
                        target=art.target,
                        runtime=runtime_for_target(art.target),
                        sha256=sha,
                        size=size,
                        io_signature=art.signature.model_dump(mode="json"),
                        golden=None if art.golden is None else art.golden.model_dump(mode="json"),
                        latency_budget_ms=art.latency_budget_ms,
                        report=art.report.model_dump(mode="json"),
                    )
                )
            session.add(row)

    def list_models(self) -> list[ModelSummary]:
        with self._sessions() as session:
            models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            return [
                ModelSummary(
                    name=m.name,
                    versions=tuple(v.version for v in m.versions),
                    created_at=m.created_at,
                )
                for m in models
            ]

    def get_version(self, name: str, version: str | None = None) -> VersionRecord:
        """One version of a model, the latest registered when ``version`` is None.

        Raises:
            ModelNotFoundError: no such model or version.
        """
        with self._sessions() as session:
            if version is None:
                row = session.scalar(
                    select(ModelVersionRow)
                    .join(ModelRow)
                    .where(ModelRow.name == name)
                    .order_by(ModelVersionRow.id.desc())
                    .limit(1)
                )
            else:
                row = _find_version(session, name, version)
            if row is None:
                raise ModelNotFoundError(name, version)
            return self._version_record(row)

    def artifacts_for(self, name: str, version: str) -> tuple[ArtifactRecord, ...]:
        """The artifacts of ``name:version`` with signature, golden set, budget and report."""
        return self.get_version(name, version).artifacts

    def _version_record(self, row: ModelVersionRow) -> VersionRecord:
        model_name = row.model.name
        return VersionRecord(
            model=model_name,
            version=row.version,
            source_sha256=row.source_sha256,
            source_size=row.source_size,
            recipe=dict(row.recipe),
            summary=dict(row.summary),
            created_at=row.created_at,
            artifacts=tuple(
                self._artifact_record(model_name, row.version, a) for a in row.artifacts
            ),
        )

    def _artifact_record(self, model: str, version: str, row: ArtifactRow) -> ArtifactRecord:
        report = ArtifactReport.model_validate(row.report)
        return ArtifactRecord(
            model=model,
            version=version,
            target=report.target,
            runtime=report.runtime,
            sha256=row.sha256,
            size=row.size,
            path=self.store.path_for(row.sha256),
            signature=IOSignature.model_validate(row.io_signature),
            golden=None if row.golden is None else GoldenSet.model_validate(row.golden),
            latency_budget_ms=row.latency_budget_ms,
            report=report,
            created_at=row.created_at,
        )


def _find_version(session: Session, name: str, version: str) -> ModelVersionRow | None:
    return session.scalar(
        select(ModelVersionRow)
        .join(ModelRow)
        .where(ModelRow.name == name, ModelVersionRow.version == version)
    )
