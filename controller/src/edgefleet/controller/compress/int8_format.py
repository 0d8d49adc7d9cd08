"""Which static int8 format ships: QDQ or QOperator (:func:`choose_static_format`), from what
each file does on the check calls against the fp32 graph; a format that does not run on the CPU
provider here, or holds a dynamic integer kernel, is never kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.controller.compress.compact import all_graphs
from edgefleet.controller.compress.int8_coverage import int8_coverage
from edgefleet.controller.compress.quantize import (
    ACTIVATION_TYPES,
    Feed,
    QuantFormatName,
    describe_failure,
    ort_session,
    run_feed,
)

# Integer kernels a static pass must never leave: ConvInteger and MatMulInteger are dynamic
# quantization's (onnxruntime's CPU provider has no int8-activation ConvInteger kernel).
_NOT_STATIC_KERNELS = frozenset({"ConvInteger", "MatMulInteger"})
FORMAT_ERROR_SLACK = 1.25  # QOperator may err this many times QDQ's error (see no_worse)
FORMAT_ERROR_FLOOR = 0.002  # ... plus this share of the fp32 output's peak


def static_kernels_left(path: Path) -> list[str]:
    """Operators a static quantizer's output must not hold (``ConvInteger``, ...); checked before
    the dynamic pass, which adds them on purpose for what static mode left float."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted({n.op_type for g in all_graphs(graph) for n in g.node} & _NOT_STATIC_KERNELS)


@dataclass(frozen=True)
class FormatQuality:
    """What one static int8 format's artifact does on the check calls, against the fp32 graph."""

    size_bytes: int
    max_rel_error: float  # worst |int8 - fp32| of any output, over that output's fp32 peak
    mean_rel_error: float  # mean |int8 - fp32| over the fp32 peak, averaged over the outputs
    top1_agreement: float | None  # classifiers (one [N, C>=2] output): argmax shared with fp32
    samples: int  # rows of the first output over the check calls
    int8_weight_share: float
    failure: str | None = None  # why it cannot ship (it does not run here, a dynamic kernel)

    def as_details(self) -> dict[str, Any]:
        if self.failure is not None:
            return {"bytes": self.size_bytes, "failure": self.failure}
        return {
            "bytes": self.size_bytes,
            "max_rel_error": round(self.max_rel_error, 5),
            "mean_rel_error": round(self.mean_rel_error, 6),
            "top1_agreement": self.top1_agreement,
            "int8_weight_share": round(self.int8_weight_share, 4),
        }


def format_quality(
    path: Path,
    reference: Sequence[list[np.ndarray]],
    feeds: Sequence[Feed],
    refused: str | None = None,
) -> FormatQuality:
    """:class:`FormatQuality` of the int8 file at ``path`` over ``feeds``, whose fp32 outputs
    are ``reference``; a file already ``refused`` (see :func:`static_kernels_left`), or one
    that does not run on this CPU provider, gets its ``failure`` instead of figures."""
    size = path.stat().st_size
    if refused is not None:
        return FormatQuality(size, 0.0, 0.0, None, 0, 0.0, refused)
    try:
        session = ort_session(path)
        produced = [list(session.run(None, feed)) for feed in feeds]
    except Exception as e:  # noqa: BLE001 - any failure to load or run disqualifies the file
        return FormatQuality(
            size, 0.0, 0.0, None, 0, 0.0, f"does not run: {describe_failure(e)[1]}"
        )
    worst: list[float] = []
    means: list[float] = []
    for i in range(len(reference[0]) if reference else 0):
        ref = np.concatenate([np.asarray(r[i], np.float64).ravel() for r in reference])
        out = np.concatenate([np.asarray(p[i], np.float64).ravel() for p in produced])
        peak = float(np.abs(ref).max(initial=0.0)) or 1.0
        diff = np.abs(out - ref)
        worst.append(float(diff.max(initial=0.0)) / peak)
        means.append(float(diff.mean()) / peak if diff.size else 0.0)
    agreement = None
    if reference and len(reference[0]) == 1 and _classifier_output(reference[0][0]):
        want = np.concatenate([r[0].argmax(axis=-1) for r in reference])
        got = np.concatenate([p[0].argmax(axis=-1) for p in produced])
        agreement = float((want == got).mean())
    return FormatQuality(
        size_bytes=size,
        max_rel_error=max(worst, default=0.0),
        mean_rel_error=float(np.mean(means)) if means else 0.0,
        top1_agreement=agreement,
        samples=sum(int(np.shape(r[0])[0]) if np.ndim(r[0]) else 1 for r in reference),
        int8_weight_share=int8_coverage(onnx.load(str(path))).weight_share,
    )


@dataclass(frozen=True)
class FormatChoice:
    """The static int8 format kept, why, and each candidate's figures."""

    kept: QuantFormatName
    reason: str
    candidates: dict[QuantFormatName, FormatQuality]

    def as_details(self) -> dict[str, Any]:
        return {
            "quant_format": self.kept,
            "activation_type": ACTIVATION_TYPES[self.kept].name[1:].lower(),  # QInt8 -> int8
            "quant_format_choice": {
                "reason": self.reason,
                **{name: q.as_details() for name, q in self.candidates.items()},
            },
        }


def choose_static_format(
    fp32: Path,
    candidates: dict[QuantFormatName, Path],
    feeds: Sequence[Feed],
    refused: dict[QuantFormatName, str] | None = None,
) -> FormatChoice:
    """QOperator when its file is smaller and its quality on ``feeds`` is no worse than QDQ's
    (see :func:`no_worse`); QDQ otherwise, and whenever QOperator does not run here, was
    ``refused`` (its static pass left a dynamic integer kernel) or keeps fewer weights in int8.

    Raises:
        QuantizationBlockedError: the fp32 graph fails on ``feeds`` (naming the node or input).
    """
    session = ort_session(fp32)
    reference = [run_feed(session, feed) for feed in feeds]
    refused = refused or {}
    figures = {
        name: format_quality(path, reference, feeds, refused.get(name))
        for name, path in candidates.items()
    }
    if set(figures) != {"QDQ", "QOperator"}:
        only = next(iter(figures))
        return FormatChoice(only, "the only format built", figures)
    qdq, qop = figures["QDQ"], figures["QOperator"]
    if qop.failure is not None:
        return FormatChoice("QDQ", f"QOperator {qop.failure}", figures)
    if qdq.failure is not None:
        return FormatChoice("QDQ", f"QDQ {qdq.failure}; QOperator not compared", figures)
    if qop.size_bytes >= qdq.size_bytes:
        return FormatChoice("QDQ", "QOperator is not smaller", figures)
    worse = no_worse(qop, qdq)
    if worse:
        return FormatChoice("QDQ", f"QOperator is smaller but worse: {worse}", figures)
    saved = qdq.size_bytes - qop.size_bytes
    return FormatChoice(
        "QOperator", f"{saved:,} bytes smaller, quality no worse on {qop.samples} samples", figures
    )


def no_worse(candidate: FormatQuality, baseline: FormatQuality) -> str | None:
    """Why ``candidate`` is worse than ``baseline`` beyond the tolerance, or None: top-1
    agreement with fp32 at most one check sample lower (the slack the golden pairs allow a
    device), its mean and worst output errors at most :data:`FORMAT_ERROR_SLACK` times
    ``baseline``'s (plus :data:`FORMAT_ERROR_FLOOR` of the fp32 peak, for errors near zero)."""
    if candidate.top1_agreement is not None and baseline.top1_agreement is not None:
        slack = 1 / max(1, candidate.samples)
        if candidate.top1_agreement < baseline.top1_agreement - slack:
            return (
                f"top-1 agreement {candidate.top1_agreement:.4f} against "
                f"{baseline.top1_agreement:.4f}"
            )
    for what in ("mean_rel_error", "max_rel_error"):
        mine, theirs = getattr(candidate, what), getattr(baseline, what)
        if mine > theirs * FORMAT_ERROR_SLACK + FORMAT_ERROR_FLOOR:
            return f"{what.replace('_', ' ')} {mine:.5f} against {theirs:.5f}"
    if candidate.int8_weight_share < baseline.int8_weight_share:
        return (
            f"int8 weight share {candidate.int8_weight_share:.4f} against "
            f"{baseline.int8_weight_share:.4f}"
        )
    return None


def _classifier_output(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] >= 2 and np.issubdtype(out.dtype, np.floating)
