"""The real-model section of ``bench/compress.py``: pretrained models nobody here trained (from
registry wheels, ``tests/support/pretrained.py``) compressed to every target their source allows,
per model and target: size ratio, accuracy delta (labelled data) or agreement with the source,
and latency on the controller host as a ratio to the source's fp32 artifact.

Goal: int8 >= 3.5x smaller with <= 1 pt loss (or >= 99 % top-1 agreement without labels).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgefleet.controller.compress import CompressionData, Dataset, Recipe, compress
from edgefleet.controller.compress.sources import onnx_source
from edgefleet.controller.config import get_settings
from support.pretrained import MODELS, pretrained_model
from support.pretrained_data import text_lines, text_pages


def _rows(result: Any) -> dict[str, dict[str, Any]]:
    fp32 = result.reports["onnx-fp32"]
    rows = {}
    for target, report in result.reports.items():
        quality = report.quality
        rows[target] = {
            "size_bytes": report.size_bytes,
            "size_ratio": round(report.size_ratio, 2),
            "accuracy": quality.accuracy,
            "accuracy_delta_pt": quality.accuracy_delta_pt,
            "top1_agreement": quality.top1_agreement,
            "max_abs_error": round(quality.max_abs_error, 5),
            "max_rel_error": round(quality.max_rel_error, 5),
            "latency_p50_ms": round(report.latency.p50_ms, 4),
            "latency_ratio": round(report.latency.p50_ms / fp32.latency.p50_ms, 3),
            "latency_host": report.latency.host,
            "opset": report.details.get("opset"),
        }
    return rows


def real_model_figures(work: Path, quick: bool) -> dict[str, Any]:
    """Per pretrained model: its package, and a row per target."""
    settings = get_settings(data_dir=work, latency_runs=50 if quick else 200)
    count = 64 if quick else 256
    lines, labels = text_lines(count, seed=1)
    calib_lines, _ = text_lines(count, seed=2)
    cases = {
        "ppocr-cls": CompressionData(
            evaluation=Dataset(inputs={"x": lines}, labels=labels),
            calibration=Dataset(inputs={"x": calib_lines}),
        ),
        "ppocr-det": CompressionData(
            evaluation=Dataset(inputs={"x": text_pages(count // 8, seed=1)}),
            calibration=Dataset(inputs={"x": text_pages(count // 8, seed=2)}),
        ),
    }
    figures: dict[str, Any] = {}
    for name, data in cases.items():
        recipe = Recipe(targets=("onnx-fp32", "onnx-int8"), onnx_int8_mode="static")
        source = onnx_source(pretrained_model(name))
        result = compress(source, recipe, data, work / name, settings=settings)
        model = MODELS[name]
        figures[name] = {
            "package": f"{model.wheel.project}=={model.wheel.version}",
            "file": Path(model.member).name,
            "source_bytes": result.source_size,
            "targets": _rows(result),
        }
    return figures


def print_table(figures: dict[str, Any]) -> None:
    for name, model in figures.items():
        for target, row in model["targets"].items():
            quality = (
                f"acc {row['accuracy']:.4f} ({row['accuracy_delta_pt']:+.2f} pt)"
                if row["accuracy"] is not None
                else f"max abs err {row['max_abs_error']:.4f}"
            )
            print(
                f"{name:10s} {target:11s} size x{row['size_ratio']:<5} {quality} "
                f"latency x{row['latency_ratio']} ({row['latency_host']})"
            )
