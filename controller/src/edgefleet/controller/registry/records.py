"""What the registry hands out: an artifact's report, and records of artifacts and versions.

Plain data apart from the database rows and API schemas; the report is a pydantic model because it
is stored and printed as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.shared.manifest import ArtifactRuntime, ArtifactTarget, GoldenSet, IOSignature


class LatencyStats(BaseModel):
    """CPU latency at batch 1 with the artifact's own runtime on the machine that built it."""

    model_config = ConfigDict(frozen=True)

    runtime: str
    runs: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    host: str | None = Field(
        default=None, description="the machine it was measured on: a reference, never a budget"
    )


class QualityStats(BaseModel):
    """How the artifact does on held-out data, against labels and against the original model."""

    model_config = ConfigDict(frozen=True)

    samples: int
    accuracy: float | None = Field(default=None, description="top-1 vs labels, when labelled")
    original_accuracy: float | None = None
    accuracy_delta_pt: float | None = Field(
        default=None, description="(accuracy - original_accuracy) in percentage points"
    )
    top1_agreement: float | None = Field(default=None, description="vs the original's top-1")
    max_abs_error: float = Field(description="largest |artifact - original| over all outputs")
    max_rel_error: float


class ArtifactReport(BaseModel):
    """The evaluation report of one artifact."""

    model_config = ConfigDict(frozen=True)

    target: ArtifactTarget
    runtime: ArtifactRuntime
    size_bytes: int
    original_size_bytes: int
    size_ratio: float = Field(description="original_size_bytes / size_bytes (x times smaller)")
    param_count: int
    sparsity: float = Field(description="fraction of weight values that are exactly zero")
    quality: QualityStats | None = Field(description="None when it cannot run here")
    latency: LatencyStats | None = Field(description="None when it cannot run here")
    compare: Literal["allclose", "top1"]
    recipe: dict[str, Any]
    details: dict[str, Any] = Field(default_factory=dict)
    unmeasured: str | None = Field(
        default=None,
        description="why quality, latency and golden pairs are missing (an edgetpu artifact "
        "imported without its CPU twin: the device checks dtypes, shapes and finiteness only)",
    )

    @model_validator(mode="after")
    def _missing_figures_say_why(self) -> ArtifactReport:
        if (self.quality is None, self.latency is None) != (self.unmeasured is not None,) * 2:
            raise ValueError("quality and latency are measured, or None with the reason why")
        return self


@dataclass(frozen=True)
class ArtifactRecord:
    """One stored artifact of a model version, everything a publisher needs for a manifest."""

    model: str
    version: str
    target: ArtifactTarget
    runtime: ArtifactRuntime
    sha256: str
    size: int
    path: Path
    signature: IOSignature
    golden: GoldenSet | None  # None: see ArtifactReport.unmeasured
    latency_budget_ms: float
    report: ArtifactReport
    created_at: datetime


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: str
    source_sha256: str
    source_size: int
    recipe: dict[str, Any]
    summary: dict[str, Any]
    created_at: datetime
    artifacts: tuple[ArtifactRecord, ...]

    def artifact(self, target: str) -> ArtifactRecord | None:
        return next((a for a in self.artifacts if a.target == target), None)


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class NewArtifact:
    """An artifact file built by the pipeline, not yet in the store."""

    target: ArtifactTarget
    file: Path
    signature: IOSignature
    golden: GoldenSet | None  # None: see ArtifactReport.unmeasured
    latency_budget_ms: float
    report: ArtifactReport

    def __post_init__(self) -> None:
        if (self.golden is None) != (self.report.unmeasured is not None):
            raise ValueError(f"{self.target}: golden pairs are missing only with the reason why")
