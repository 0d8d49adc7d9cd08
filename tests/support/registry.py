"""Registering model versions without compressing anything: tiny fake artifacts with a real
signature, golden set and report, for tests of what happens after a model is registered."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from edgefleet.controller.registry import (
    ArtifactReport,
    LatencyStats,
    ModelRegistry,
    NewArtifact,
    QualityStats,
)
from edgefleet.shared.manifest import GoldenPair, GoldenSet, IOSignature, TensorData, TensorSpec

FAKE_SIGNATURE = IOSignature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=(None, 2)),),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(None, 1)),),
)


def _tensor(array: np.ndarray) -> TensorData:
    return TensorData(
        dtype="float32", shape=array.shape, data_b64=base64.b64encode(array.tobytes()).decode()
    )


def fake_artifact(directory: Path, target: str, payload: bytes) -> NewArtifact:
    """An artifact of ``payload`` bytes (not a loadable model) with a one-pair golden set."""
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / f"{target}-{len(payload)}-{payload[:8].hex()}.bin"
    file.write_bytes(payload)
    golden = GoldenSet(
        pairs=(
            GoldenPair(
                inputs={"x": _tensor(np.ones((1, 2), np.float32))},
                outputs={"y": _tensor(np.ones((1, 1), np.float32))},
            ),
        )
    )
    report = ArtifactReport(
        target=target,
        runtime="onnxruntime" if target.startswith("onnx") else "litert",  # type: ignore[arg-type]
        size_bytes=len(payload),
        original_size_bytes=1000,
        size_ratio=1000 / len(payload),
        param_count=3,
        sparsity=0.0,
        quality=QualityStats(samples=10, top1_agreement=1.0, max_abs_error=0.0, max_rel_error=0.0),
        latency=LatencyStats(runtime="test", runs=5, mean_ms=0.1, p50_ms=0.1, p95_ms=0.2),
        compare="allclose",
        recipe={"targets": [target]},
    )
    return NewArtifact(
        target=target,
        file=file,
        signature=FAKE_SIGNATURE,
        golden=golden,
        latency_budget_ms=5.0,
        report=report,
    )


def register_fake_versions(
    registry: ModelRegistry, directory: Path, model: str, versions: tuple[str, ...]
) -> dict[str, str]:
    """Register one ``onnx-fp32`` fake artifact per version; returns version -> sha256."""
    shas = {}
    for version in versions:
        record = registry.register_version(
            model,
            version,
            source_sha256="f" * 64,
            source_size=1,
            recipe={},
            summary={},
            artifacts=[fake_artifact(directory, "onnx-fp32", f"{model}:{version}".encode() * 64)],
        )
        shas[version] = record.artifacts[0].sha256
    return shas
