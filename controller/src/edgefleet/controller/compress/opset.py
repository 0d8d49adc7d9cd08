"""Opset upgrade before quantizing: per-channel int8 needs DequantizeLinear's ``axis`` (opset 13),
so an older ONNX graph is upgraded with ``onnx.version_converter`` and kept only if it computes
what the original computes, checked with onnxruntime on the evaluation data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter

from edgefleet.controller.compress.quantize import Feed, describe_failure, ort_session
from edgefleet.controller.errors import CompressionError

PER_CHANNEL_OPSET = 13  # DequantizeLinear gained ``axis`` (per-channel scales) in opset 13
QUANTIZER_MIN_OPSET = 10  # below this, onnxruntime's quantizer runs the converter itself, unchecked
RTOL, ATOL = 1e-5, 1e-6  # what "equal outputs" means for the upgraded graph


@dataclass(frozen=True)
class OpsetUpgrade:
    """The graph to quantize and how it came from the working model."""

    path: Path  # the upgraded graph, or the original one when not upgraded
    from_opset: int
    to_opset: int
    max_abs_diff: float | None = None  # upgraded vs original on the check data
    checked_calls: int = 0
    failure: str | None = None  # why no upgrade was kept (converter error, different outputs)
    refused: tuple[str, ...] = ()  # higher opsets tried first and refused, when 13 was kept

    @property
    def upgraded(self) -> bool:
        return self.to_opset != self.from_opset

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"source_opset": self.from_opset, "opset": self.to_opset}
        if self.upgraded:
            details["opset_upgrade"] = {
                "from": self.from_opset,
                "to": self.to_opset,
                "max_abs_diff": self.max_abs_diff,
                "checked_calls": self.checked_calls,
                "tolerance": {"rtol": RTOL, "atol": ATOL},
            }
            if self.refused:
                details["opset_upgrade"]["refused"] = list(self.refused)
        if self.failure:
            details["opset_upgrade_failed"] = self.failure
        return details


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default (ai.onnx) domain.

    Raises:
        CompressionError: the model imports no ai.onnx opset.
    """
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    raise CompressionError("the ONNX model imports no ai.onnx opset")


def upgrade_opset(src: Path, work: Path, target: int, check: Sequence[Feed]) -> OpsetUpgrade:
    """``src`` upgraded to ``max(target, 13)`` when below 13 (retrying 13 when a higher opset is
    refused), kept only if its outputs equal the original's on every ``check`` call within
    rtol 1e-5 / atol 1e-6; otherwise the original, with the reason in ``failure``."""
    model = onnx.load(str(src))
    current = ai_onnx_opset(model)
    if current >= PER_CHANNEL_OPSET:
        return OpsetUpgrade(src, current, current)
    if not check:
        return OpsetUpgrade(src, current, current, failure="no data to check the upgrade on")
    failures: list[str] = []
    for opset in dict.fromkeys((max(target, PER_CHANNEL_OPSET), PER_CHANNEL_OPSET)):
        dst = work / f"{src.stem}-opset{opset}.onnx"
        try:
            reason, diff = _try_upgrade(model, src, dst, opset, check)
        except Exception as e:  # noqa: BLE001 - converter and checker raise assorted types
            reason, diff = f"{type(e).__name__}: {_first_line(e)}", None
        if reason is None:
            return OpsetUpgrade(dst, current, opset, diff, len(check), refused=tuple(failures))
        failures.append(f"to opset {opset}: {reason}")
    return OpsetUpgrade(src, current, current, failure="; ".join(failures))


def _try_upgrade(
    model: onnx.ModelProto, src: Path, dst: Path, opset: int, check: Sequence[Feed]
) -> tuple[str | None, float | None]:
    """(None, max abs diff) when the upgrade computes the same outputs, else (reason, diff)."""
    upgraded = version_converter.convert_version(model, opset)
    onnx.checker.check_model(upgraded)
    onnx.save(upgraded, str(dst))
    try:
        original, candidate = ort_session(src, optimize=False), ort_session(dst, optimize=False)
    except Exception as e:  # noqa: BLE001 - onnxruntime's load errors have one base type
        return f"onnxruntime cannot load the upgraded model: {describe_failure(e)[1]}", None
    worst = 0.0
    for feed in check:
        want = original.run(None, feed)
        try:
            got = candidate.run(None, feed)
        except Exception as e:  # noqa: BLE001
            return f"onnxruntime cannot run the upgraded model: {describe_failure(e)[1]}", None
        for w, g in zip(want, got, strict=True):
            if w.shape != g.shape:
                return f"an output changed shape from {list(w.shape)} to {list(g.shape)}", None
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
            worst = max(worst, float(diff.max(initial=0.0)))
            if not np.allclose(g, w, rtol=RTOL, atol=ATOL):
                culprit = first_divergent_node(src, dst, feed)
                where = f" (first at node {culprit})" if culprit else ""
                return (
                    f"outputs differ after the upgrade{where}: max abs diff {worst:.3g} "
                    f"(tolerance rtol {RTOL:g}, atol {ATOL:g})",
                    worst,
                )
    return None, worst


def first_divergent_node(original: Path, upgraded: Path, feed: Feed) -> str | None:
    """The first node, in graph order, whose output differs between the two graphs: ``'name'
    (OpType)``; None when it cannot be told (renamed values, or a run fails)."""
    try:
        base = onnx.shape_inference.infer_shapes(onnx.load(str(original)))
        other = onnx.shape_inference.infer_shapes(onnx.load(str(upgraded)))
        outputs = {v.name for v in base.graph.output}
        typed = {v.name: v for v in base.graph.value_info if v.type.tensor_type.elem_type}
        produced = {out for node in other.graph.node for out in node.output}
        probes = [
            (node, out)
            for node in base.graph.node
            for out in node.output
            if (out in typed or out in outputs) and out in produced
        ]
        if not probes:
            return None
        extra = [typed[out] for _, out in probes if out not in outputs]
        for graph in (base, other):
            graph.graph.output.extend(extra)
        paths = []
        for name, graph in (("base", base), ("other", other)):
            path = upgraded.with_name(f"{upgraded.stem}-probe-{name}.onnx")
            onnx.save(graph, str(path))
            paths.append(path)
        names = [out for _, out in probes]
        want = ort_session(paths[0], optimize=False).run(names, feed)
        got = ort_session(paths[1], optimize=False).run(names, feed)
    except Exception:  # noqa: BLE001 - a diagnosis only; the caller reports the difference anyway
        return None
    for (node, _), w, g in zip(probes, want, got, strict=True):
        if w.shape != g.shape or not np.allclose(g, w, rtol=RTOL, atol=ATOL):
            return f"{node.name or node.output[0]!r} ({node.op_type})"
    return None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
