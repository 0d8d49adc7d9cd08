"""Evaluation of built artifacts: quality against labels and the original model, golden pairs the
agent validates with, and the latency budget suggested from measured latency."""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgefleet.controller.compress.runners import Arrays, ArtifactRunner, run_batched
from edgefleet.controller.compress.sources import dtype_name
from edgefleet.controller.registry.records import QualityStats
from edgefleet.shared.manifest import GoldenPair, GoldenSet, TensorData

QUANTIZED_TARGETS = frozenset({"onnx-int8", "tflite-int8", "tflite-full-int8", "edgetpu"})


def is_classifier(reference: Arrays, labels: np.ndarray | None, task: str = "auto") -> bool:
    """Compare by top-1? Yes for classification; in ``auto``, when there is one float output of
    shape [N, C>=2] (or labels were given)."""
    if task != "auto":
        return task == "classification"
    if len(reference) != 1:
        return False
    out = next(iter(reference.values()))
    shaped = out.ndim == 2 and out.shape[1] >= 2 and np.issubdtype(out.dtype, np.floating)
    return shaped or (labels is not None and out.ndim == 2)


def quality_stats(
    reference: Arrays,
    produced: Arrays,
    labels: np.ndarray | None,
    *,
    classifier: bool,
) -> QualityStats:
    """Accuracy (when labelled), top-1 agreement (classifiers) and errors against the original.

    Outputs are matched by position: exporters may rename them.
    """
    ref_list = list(reference.values())
    out_list = list(produced.values())
    max_abs = 0.0
    max_rel = 0.0
    for ref, out in zip(ref_list, out_list, strict=True):
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        scale = float(np.abs(ref).max(initial=0.0)) or 1.0
        max_rel = max(max_rel, float(diff.max(initial=0.0)) / scale)
    accuracy = original_accuracy = delta = agreement = None
    if classifier:
        ref_top1 = ref_list[0].argmax(axis=-1)
        top1 = out_list[0].argmax(axis=-1)
        agreement = float((top1 == ref_top1).mean())
        if labels is not None:
            accuracy = float((top1 == labels).mean())
            original_accuracy = float((ref_top1 == labels).mean())
            delta = 100.0 * (accuracy - original_accuracy)
    return QualityStats(
        samples=int(ref_list[0].shape[0]),
        accuracy=accuracy,
        original_accuracy=original_accuracy,
        accuracy_delta_pt=delta,
        top1_agreement=agreement,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
    )


def compare_mode(target: str, classifier: bool) -> Literal["allclose", "top1"]:
    return "top1" if classifier and target in QUANTIZED_TARGETS else "allclose"


def golden_set(
    runner: ArtifactRunner,
    inputs: Arrays,
    *,
    target: str,
    classifier: bool,
    count: int,
) -> GoldenSet:
    """Golden pairs at batch 1 from the first ``count`` samples: native inputs and what *this*
    artifact outputs for them, with a comparison suited to the artifact's arithmetic."""
    n = min(count, next(iter(inputs.values())).shape[0])
    native = runner.to_native({k: v[:n] for k, v in inputs.items()})
    outputs = run_batched(runner, native)
    pairs = tuple(
        GoldenPair(
            inputs={k: _tensor(v[i : i + 1]) for k, v in native.items()},
            outputs={k: _tensor(v[i : i + 1]) for k, v in outputs.items()},
        )
        for i in range(n)
    )
    mode = compare_mode(target, classifier)
    if mode == "top1":
        # Integer kernels differ a little between CPUs; allow one close call to flip.
        return GoldenSet(pairs=pairs, compare="top1", min_top1_agreement=max(0.0, (n - 1) / n))
    atol, rtol = _tolerances(target, outputs)
    return GoldenSet(pairs=pairs, compare="allclose", atol=atol, rtol=rtol)


def _tolerances(target: str, outputs: Arrays) -> tuple[float, float]:
    peak = max(float(np.abs(v.astype(np.float64)).max(initial=0.0)) for v in outputs.values())
    if target == "onnx-fp16":
        return max(1e-2, 1e-2 * peak), 1e-2
    if target in QUANTIZED_TARGETS:
        if any(np.issubdtype(v.dtype, np.integer) for v in outputs.values()):
            return 2.0, 0.0  # two quantization steps of an int8 output
        return max(1e-2, 0.05 * peak), 0.05
    return max(1e-4, 1e-5 * peak), 1e-3


def latency_budget_ms(p95_ms: float, factor: float, floor_ms: float) -> float:
    """This machine's p95 times ``factor``, at least ``floor_ms``: a budget an edge CPU meets."""
    return round(max(floor_ms, p95_ms * factor), 3)


def _tensor(arr: np.ndarray) -> TensorData:
    contiguous = np.ascontiguousarray(arr)
    little = contiguous.astype(contiguous.dtype.newbyteorder("<"), copy=False)
    return TensorData.from_raw(
        dtype_name(arr.dtype), tuple(int(d) for d in arr.shape), little.tobytes()
    )
