"""Registry round trip: versions and artifacts come back as shared wire types and typed reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from edgefleet.controller.config import get_settings
from edgefleet.controller.errors import ModelNotFoundError, RegistryError, VersionExistsError
from edgefleet.controller.registry import (
    Base,
    ModelRegistry,
    create_engine_for,
    create_schema,
)
from edgefleet.shared.manifest import GoldenSet
from support.registry import FAKE_SIGNATURE, fake_artifact

SIG = FAKE_SIGNATURE
_artifact = fake_artifact


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> ModelRegistry:
    """The registry on SQLite and on PostgreSQL."""
    settings = get_settings(data_dir=tmp_path / "data", database_url=database_url)
    return ModelRegistry.from_settings(settings)


def test_round_trip(registry: ModelRegistry, tmp_path: Path) -> None:
    arts = [
        _artifact(tmp_path, "onnx-fp32", b"a" * 50),
        _artifact(tmp_path, "tflite-fp32", b"b" * 40),
    ]
    record = registry.register_version(
        "m",
        "1",
        source_sha256="f" * 64,
        source_size=7,
        recipe={"r": 1},
        summary={"s": 2},
        artifacts=arts,
    )
    assert [a.target for a in record.artifacts] == ["onnx-fp32", "tflite-fp32"]
    again = registry.artifacts_for("m", "1")
    first = again[0]
    assert first.signature == SIG
    assert isinstance(first.golden, GoldenSet)
    assert first.report == arts[0].report
    assert first.runtime == "onnxruntime"
    assert again[1].runtime == "litert"
    assert first.path.read_bytes() == b"a" * 50
    assert first.size == 50
    assert registry.store.verify(first.sha256) == first.path
    assert registry.get_version("m").version == "1"
    assert [(m.name, m.versions) for m in registry.list_models()] == [("m", ("1",))]


def test_latest_version_and_missing(registry: ModelRegistry, tmp_path: Path) -> None:
    for v in ("1", "2"):
        registry.register_version(
            "m",
            v,
            source_sha256="f" * 64,
            source_size=1,
            recipe={},
            summary={},
            artifacts=[_artifact(tmp_path, "onnx-fp32", v.encode())],
        )
    assert registry.get_version("m").version == "2"
    with pytest.raises(ModelNotFoundError):
        registry.get_version("m", "3")
    with pytest.raises(ModelNotFoundError):
        registry.get_version("other")


def test_duplicate_version_leaves_store_unchanged(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.register_version(
        "m",
        "1",
        source_sha256="f" * 64,
        source_size=1,
        recipe={},
        summary={},
        artifacts=[_artifact(tmp_path, "onnx-fp32", b"one")],
    )
    blobs = registry.store.blob_count()
    with pytest.raises(VersionExistsError):
        registry.register_version(
            "m",
            "1",
            source_sha256="f" * 64,
            source_size=1,
            recipe={},
            summary={},
            artifacts=[_artifact(tmp_path, "onnx-int8", b"new")],
        )
    assert registry.store.blob_count() == blobs
    with pytest.raises(RegistryError, match="duplicate"):
        registry.register_version(
            "m",
            "2",
            source_sha256="f" * 64,
            source_size=1,
            recipe={},
            summary={},
            artifacts=[_artifact(tmp_path, "onnx-fp32", b"x")] * 2,
        )


def test_base_is_extensible_and_schema_is_created(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    create_schema(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"models", "model_versions", "artifacts"} <= tables
    assert set(Base.metadata.tables) >= tables - {"alembic_version"}
