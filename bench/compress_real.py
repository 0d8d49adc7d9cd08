"""The real-model section of ``bench/compress.py``: pretrained models nobody here trained (from
registry wheels, ``tests/support/pretrained.py``) compressed to onnx-int8 through the pipeline,
per model and target: size ratio (registered artifact bytes against the fp32 artifact's),
accuracy delta (labelled data) or agreement with the source, latency on the controller host as
a ratio to the fp32 artifact's, where the int8 artifact's bytes go, and its format (static int8:
QOperator or QDQ, with both candidates' bytes).

Agreement where no labels exist, computed here from the registered files on the evaluation
data: the text/background decision of every pixel for the PaddleOCR detector (probability above
0.3, its binarisation threshold in RapidOCR) and the speech decision of every call (probability
above 0.5, closed loop: each model fed its own state) for Silero VAD.

Goal: int8 >= 3.5x smaller with <= 1 pt loss (or >= 99 % agreement without labels).

    python bench/compress_real.py [--quick]     # this section alone; JSON on the last line
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from edgefleet.controller.compress import (  # noqa: E402
    CompressionData,
    Dataset,
    Recipe,
    compress,
    load_npz,
)
from edgefleet.controller.compress.int8_coverage import artifact_bytes  # noqa: E402
from edgefleet.controller.compress.runners import open_cpu_session  # noqa: E402
from edgefleet.controller.compress.sources import onnx_source  # noqa: E402
from edgefleet.controller.config import get_settings  # noqa: E402
from support.pretrained import MODELS, pretrained_model  # noqa: E402
from support.pretrained_data import text_lines, text_pages  # noqa: E402

DET_THRESHOLD = 0.3  # RapidOCR's DBNet binarisation threshold
VAD_THRESHOLD = 0.5  # Silero's speech threshold
SR = 16000


def _vad_data(path: Path, sequences: int, seed: int) -> Dataset:
    """Silero VAD sequences as the stateful compression test builds them (formant-shaped
    vowels, tones, clicks and noise; 4 calls of 512 new samples with the state fed back)."""
    spec = importlib.util.spec_from_file_location(
        "vad_data", TESTS / "integration" / "controller" / "test_compress_stateful.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return load_npz(module.vad_npz(path, sequences, seed))


def _session(path: Path) -> ort.InferenceSession:
    return open_cpu_session(str(path), quiet=True)[0]  # exact int8 on any x86, as on devices


def _det_agreement(fp32: Path, int8: Path, pages: np.ndarray) -> dict[str, float]:
    """Pixels whose text/background decision the int8 detector shares with the fp32 one, and
    the IoU of their text masks."""
    ref = np.concatenate([_session(fp32).run(None, {"x": p[None]})[0] for p in pages])
    out = np.concatenate([_session(int8).run(None, {"x": p[None]})[0] for p in pages])
    a, b = ref > DET_THRESHOLD, out > DET_THRESHOLD
    return {
        "pixel_agreement": round(float((a == b).mean()), 5),
        "text_iou": round(float((a & b).sum() / max(1, (a | b).sum())), 4),
    }


def _vad_agreement(fp32: Path, int8: Path, data: Dataset) -> dict[str, float]:
    """Closed-loop speech decisions (each model fed back its own state) the int8 model shares
    with the fp32 one, over every call of every sequence."""
    windows = data.inputs["input"]  # [N, steps, samples]

    def decisions(path: Path) -> np.ndarray:
        session = _session(path)
        state = np.zeros((2, windows.shape[0], 128), np.float32)
        calls = []
        for step in range(windows.shape[1]):
            feed = {"input": windows[:, step], "state": state, "sr": np.array(SR, np.int64)}
            probability, state = session.run(None, feed)
            calls.append(probability[:, 0])
        return np.stack(calls, axis=1)

    want, got = decisions(fp32), decisions(int8)
    return {
        "decision_agreement": round(
            float(((want > VAD_THRESHOLD) == (got > VAD_THRESHOLD)).mean()), 4
        ),
        "decisions": int(want.size),
        "speech_share": round(float((want > VAD_THRESHOLD).mean()), 3),
    }


def _rows(result: Any) -> dict[str, dict[str, Any]]:
    fp32 = result.reports["onnx-fp32"]
    rows = {}
    for target, report in result.reports.items():
        quality = report.quality
        rows[target] = {
            "size_bytes": report.size_bytes,
            "size_ratio": round(fp32.size_bytes / report.size_bytes, 2),
            "accuracy": quality.accuracy,
            "accuracy_delta_pt": quality.accuracy_delta_pt,
            "top1_agreement": quality.top1_agreement,
            "max_abs_error": round(quality.max_abs_error, 5),
            "max_rel_error": round(quality.max_rel_error, 5),
            "latency_p50_ms": round(report.latency.p50_ms, 4),
            "latency_ratio": round(report.latency.p50_ms / fp32.latency.p50_ms, 3),
            "latency_host": report.latency.host,
            "quantization": report.details.get("quantization"),
            "quant_format": report.details.get("quant_format"),
            "format_bytes": _format_bytes(report.details),
            "opset": report.details.get("opset"),
            "int8_heavy_ops": report.details.get("int8_heavy_ops"),
            "int8_weight_share": report.details.get("int8_weight_share"),
        }
    return rows


def _format_bytes(details: dict[str, Any]) -> dict[str, int] | None:
    """Each static int8 format's artifact bytes, as built before one was kept."""
    choice = details.get("quant_format_choice")
    if choice is None:
        return None
    return {name: figures["bytes"] for name, figures in choice.items() if name != "reason"}


def _cases(work: Path, count: int) -> dict[str, tuple[str, str, CompressionData]]:
    """Case name -> (pretrained model, int8 mode, data)."""
    lines, labels = text_lines(count, seed=1)
    calib_lines, _ = text_lines(count, seed=2)
    vad_eval = _vad_data(work / "vad-eval.npz", count // 2, seed=1)
    vad_calib = _vad_data(work / "vad-calib.npz", count // 8, seed=2)
    vad = CompressionData(evaluation=vad_eval, calibration=vad_calib)
    return {
        "ppocr-cls": (
            "ppocr-cls",
            "static",
            CompressionData(
                evaluation=Dataset(inputs={"x": lines}, labels=labels),
                calibration=Dataset(inputs={"x": calib_lines}),
            ),
        ),
        "ppocr-det": (
            "ppocr-det",
            "static",
            CompressionData(
                evaluation=Dataset(inputs={"x": text_pages(count // 8, seed=1)}),
                calibration=Dataset(inputs={"x": text_pages(count // 8, seed=2)}),
            ),
        ),
        "silero-vad": ("silero-vad", "auto", vad),
        "silero-vad-op15": ("silero-vad-op15", "auto", vad),
        "silero-vad-op15 static": ("silero-vad-op15", "static", vad),
    }


def real_model_figures(work: Path, quick: bool) -> dict[str, Any]:
    """Per pretrained model and int8 mode: its package, a row per target, the agreement
    computed here where there are no labels, and the int8 artifact's bytes by role."""
    settings = get_settings(data_dir=work, latency_runs=50 if quick else 200)
    figures: dict[str, Any] = {}
    for case, (name, mode, data) in _cases(work, 64 if quick else 256).items():
        recipe = Recipe(targets=("onnx-fp32", "onnx-int8"), onnx_int8_mode=mode)  # type: ignore[arg-type]
        model = MODELS[name]
        entry: dict[str, Any] = {
            "package": f"{model.wheel.project}=={model.wheel.version}",
            "file": Path(model.member).name,
        }
        figures[case] = entry
        try:
            result = compress(
                onnx_source(pretrained_model(name)), recipe, data, work / case.replace(" ", "-"),
                settings=settings,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - a refused target is a figure too
            entry["refused"] = f"{type(e).__name__}: {e}"
            continue
        files = {a.target: a.file for a in result.artifacts}
        entry["source_bytes"] = result.source_size
        entry["targets"] = _rows(result)
        int8 = entry["targets"]["onnx-int8"]
        if name == "ppocr-det":
            int8.update(
                _det_agreement(files["onnx-fp32"], files["onnx-int8"], data.evaluation.inputs["x"])
            )
        elif name.startswith("silero"):
            int8.update(_vad_agreement(files["onnx-fp32"], files["onnx-int8"], data.evaluation))
        entry["int8_bytes"] = artifact_bytes(onnx.load(str(files["onnx-int8"])))
    return figures


def _quality(row: dict[str, Any]) -> str:
    if row.get("accuracy") is not None:
        return f"acc {row['accuracy']:.4f} ({row['accuracy_delta_pt']:+.2f} pt)"
    if "pixel_agreement" in row:
        return f"pixels agree {row['pixel_agreement']:.2%} (IoU {row['text_iou']:.3f})"
    if "decision_agreement" in row:
        return f"speech decisions agree {row['decision_agreement']:.2%} of {row['decisions']}"
    return f"max abs err {row['max_abs_error']:.4f}"


def print_table(figures: dict[str, Any]) -> None:
    for case, model in figures.items():
        if "refused" in model:
            print(f"{case:22s} onnx-int8   refused: {model['refused'][:200]}")
            continue
        for target, row in model["targets"].items():
            formats = row["format_bytes"] or {}
            kept = f" {row['quant_format']}" if row["quant_format"] else ""
            other = ", ".join(f"{k} {v:,} B" for k, v in formats.items())
            print(
                f"{case:22s} {target:10s} x{row['size_ratio']:<5} {_quality(row):40s} "
                f"max abs err {row['max_abs_error']:.4f}  latency x{row['latency_ratio']}{kept}"
                + (f" (built: {other})" if other else "")
            )
        if "int8_bytes" in model:
            parts = sorted(model["int8_bytes"].items(), key=lambda kv: -kv[1])
            print(" " * 23 + "int8 bytes: " + ", ".join(f"{k} {v:,}" for k, v in parts))
    hosts = {row["latency_host"] for m in figures.values() for row in m.get("targets", {}).values()}
    print(f"latency measured on the controller host: {', '.join(sorted(hosts))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples and timing runs")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-real-") as tmp:
        figures = real_model_figures(Path(tmp), args.quick)
    print_table(figures)
    print(json.dumps({"real_models": figures, "seconds": round(time.perf_counter() - start, 1),
                      "quick": args.quick}))  # fmt: skip


if __name__ == "__main__":
    main()
