"""Benchmark of the compression pipeline: the digits reference recipe, structured pruning of a
CNN where compute (not per-call overhead) dominates latency, and real pretrained models
(``bench/compress_real.py``, which also runs alone: size ratio, accuracy or agreement, latency
ratio and the int8 artifact's bytes by role, per model and target). Prints JSON on its last line.

    python bench/compress.py [--quick] [--no-real-models]
    python bench/compress_real.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress_real import print_table, real_model_figures
from edgefleet.controller.compress import CompressionData, Dataset, Recipe, compress
from edgefleet.controller.compress.reference import build_reference_model
from edgefleet.controller.compress.sources import torch_source
from edgefleet.controller.config import get_settings


class BenchCnn(nn.Module):
    """A VGG-style block stack on 3x64x64 images: convolution compute dominates its latency."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 4 * 4, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


def reference_figures(data_dir: Path, quick: bool) -> dict:
    settings = get_settings(data_dir=data_dir, latency_runs=100 if quick else 300)
    record = build_reference_model(data_dir, quick=quick, settings=settings)
    summary = record.summary
    reports = {a.target: a.report for a in record.artifacts}
    teacher_acc = summary["original_accuracy"]
    artifacts = {}
    for target, report in reports.items():
        family_fp32 = reports["onnx-fp32" if target.startswith("onnx") else "tflite-fp32"]
        acc = report.quality.accuracy
        fp32_acc = family_fp32.quality.accuracy
        artifacts[target] = {
            "size_bytes": report.size_bytes,
            "size_ratio": round(family_fp32.size_bytes / report.size_bytes, 3),
            "size_ratio_vs_teacher": round(report.size_ratio, 2),
            "accuracy": acc,
            "accuracy_delta_pt": round(100 * (acc - teacher_acc), 2),
            "accuracy_delta_vs_fp32_pt": round(100 * (acc - fp32_acc), 2),
            "latency_mean_ms": round(report.latency.mean_ms, 4),
            "latency_p95_ms": round(report.latency.p95_ms, 4),
            "latency_ratio": round(report.latency.mean_ms / family_fp32.latency.mean_ms, 3),
        }
    distill = summary["distillation"]
    return {
        "artifacts": artifacts,
        "teacher_accuracy": teacher_acc,
        "teacher_params": distill["teacher_params"],
        "student_params": summary["final_params"],
        "student_param_ratio": round(distill["teacher_params"] / summary["final_params"], 2),
        "student_accuracy": summary["final_accuracy"],
        "student_accuracy_delta_pt": round(100 * (summary["final_accuracy"] - teacher_acc), 2),
        "distilled_student_accuracy": distill["distilled_accuracy"],
        "scratch_student_accuracy": distill.get("scratch_accuracy"),
    }


def structured_figures(work: Path, quick: bool) -> dict:
    torch.manual_seed(0)
    images = np.random.default_rng(0).normal(size=(16, 3, 64, 64)).astype(np.float32)
    data = CompressionData(evaluation=Dataset(inputs={"image": images}))
    settings = get_settings(data_dir=work, latency_runs=40 if quick else 150)
    figures = {}
    for label, ratio in (("dense", 0.0), ("pruned", 0.5)):
        recipe = Recipe(targets=("onnx-fp32",), structured_ratio=ratio)
        result = compress(torch_source(BenchCnn()), recipe, data, work / label, settings=settings)
        report = result.reports["onnx-fp32"]
        figures[label] = {
            "params": report.param_count,
            "mean_ms": report.latency.mean_ms,
            "p50_ms": report.latency.p50_ms,
            "p95_ms": report.latency.p95_ms,
            "size_bytes": report.size_bytes,
        }
        if ratio:
            figures[label]["macs_ratio"] = (
                result.summary["structured_pruning"]["macs_after"]
                / result.summary["structured_pruning"]["macs_before"]
            )
    return {
        # medians: the machine is shared, and a few slow runs would swing the means
        "structured_prune_latency_ratio": round(
            figures["pruned"]["p50_ms"] / figures["dense"]["p50_ms"], 3
        ),
        "structured_prune": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and timing runs")
    parser.add_argument(
        "--no-real-models", action="store_true", help="skip the pretrained models' section"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        figures = reference_figures(Path(tmp) / "reference", args.quick)
        figures.update(structured_figures(Path(tmp) / "structured", args.quick))
        if not args.no_real_models:
            figures["real_models"] = real_model_figures(Path(tmp) / "real", args.quick)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    figures["quick"] = args.quick
    for target, row in figures["artifacts"].items():
        print(
            f"{target:17s} size x{row['size_ratio']:<6} acc {row['accuracy']:.4f} "
            f"({row['accuracy_delta_pt']:+.2f} pt vs teacher) latency x{row['latency_ratio']}"
        )
    print_table(figures.get("real_models", {}))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
