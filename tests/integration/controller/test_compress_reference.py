"""The reference recipe the demo calls: a teacher, a distilled and pruned student, every target
that can be built here."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgefleet.controller.compress.reference import build_reference_model, buildable_targets
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry import ModelRegistry


def test_reference_model_is_built_and_registered(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path, latency_runs=10)
    record = build_reference_model(tmp_path, quick=True, settings=settings)
    expected = (
        "onnx-fp32",
        "onnx-int8",
        "onnx-fp16",
        "tflite-fp32",
        "tflite-int8",
        "tflite-full-int8",
    )
    if shutil.which("edgetpu_compiler"):
        expected = (*expected, "edgetpu")
    assert buildable_targets() == expected
    assert tuple(a.target for a in record.artifacts) == expected
    distill = record.summary["distillation"]
    assert distill["param_ratio"] >= 50
    assert {"teacher_accuracy", "distilled_accuracy", "scratch_accuracy"} <= set(distill)
    assert record.summary["unstructured_pruning"]["sparsity"] >= 0.49
    teacher = record.summary["original_accuracy"]
    assert teacher >= 0.95
    for artifact in record.artifacts:
        accuracy = artifact.report.quality.accuracy
        assert accuracy is not None, artifact.target
        assert accuracy >= teacher - 0.03, artifact.target
    again = ModelRegistry.from_settings(settings).get_version("digits", "1")
    assert [a.sha256 for a in again.artifacts] == [a.sha256 for a in record.artifacts]
