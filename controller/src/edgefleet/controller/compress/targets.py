"""Build one artifact file per target from the working model (torch module or ONNX graph), or,
for a float TFLite source, from that file (its ONNX targets from its tf2onnx conversion, the
``tensorflow`` extra). An ONNX graph's LiteRT targets come from its onnx2tf conversion (the same
extra), quantized as a TFLite source is."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx
from torch import nn

from edgefleet.controller.compress.built import BuiltFile, Notify
from edgefleet.controller.compress.compact import compact_file
from edgefleet.controller.compress.convert import (
    compile_edgetpu,
    export_tflite_fp32,
    export_tflite_int8,
)
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.evaluate import call_batch
from edgefleet.controller.compress.int8_coverage import Int8Coverage, heavy_ops, int8_coverage
from edgefleet.controller.compress.int8_format import choose_static_format, static_kernels_left
from edgefleet.controller.compress.opset import (
    PER_CHANNEL_OPSET,
    QUANTIZER_MIN_OPSET,
    upgrade_opset,
)
from edgefleet.controller.compress.quantize import (
    Feed,
    QuantFormatName,
    check_feeds,
    choose_int8_mode,
    convert_onnx_fp16,
    has_op,
    ort_session,
    quantize_leftovers_dynamic,
    quantize_onnx_dynamic,
    quantize_onnx_static,
    run_feed,
)
from edgefleet.controller.compress.recipe import Recipe
from edgefleet.controller.compress.sources import onnx_signature
from edgefleet.controller.compress.tflite_quantize import quantize_tflite
from edgefleet.controller.errors import (
    CompressionError,
    ConversionError,
    Int8CoverageError,
    OpsetUpgradeError,
)
from edgefleet.shared.manifest import ArtifactTarget

MAX_CALIBRATION_SAMPLES = 256
MAX_CHECK_SAMPLES = 64  # evaluation samples an opset upgrade is checked on
FEED_BATCH = 32  # samples per call when calibrating and checking
MIN_INT8_WEIGHT_SHARE = 0.5  # at least this much of the heavy weights in int8, or no int8 artifact


class ArtifactBuilder(Protocol):
    def build(self, target: ArtifactTarget, notify: Notify) -> BuiltFile: ...


@dataclass
class SplitTargetBuilder:
    """ONNX targets (``onnx-*``) from one builder, LiteRT targets (``tflite-*``, ``edgetpu``)
    from another, each made on first use: a conversion runs only when a target needs it."""

    onnx: Callable[[Notify], ArtifactBuilder]
    litert: Callable[[Notify], ArtifactBuilder]
    made: dict[str, ArtifactBuilder] = field(default_factory=dict)

    def build(self, target: ArtifactTarget, notify: Notify) -> BuiltFile:
        side = "onnx" if target.startswith("onnx-") else "litert"
        if side not in self.made:
            self.made[side] = (self.onnx if side == "onnx" else self.litert)(notify)
        return self.made[side].build(target, notify)


def onnx_litert_builder(
    work: Path, fp32_onnx: Path, calibration: Dataset | None, check: Dataset, notify: Notify
) -> TfliteTargetBuilder:
    """LiteRT targets of an ONNX graph: ``tflite-fp32`` converted by onnx2tf (checked against the
    graph on ``check``), the others quantized from it as from a float TFLite source.

    Raises:
        MissingExtraError, UnconvertibleNodeError, ConversionError, SignatureMismatchError: see
            :func:`~edgefleet.controller.compress.onnx_to_tflite.onnx_to_tflite`.
    """
    from edgefleet.controller.compress.onnx_to_tflite import onnx_to_tflite

    notify("converting ONNX to TFLite (onnx2tf)")
    path, details = onnx_to_tflite(fp32_onnx, work, check)
    builder = TfliteTargetBuilder(work, path, calibration)
    builder.built["tflite-fp32"] = BuiltFile("tflite-fp32", path, details)
    return builder


@dataclass
class TargetBuilder:
    """Builds artifacts into ``work`` from an fp32 ONNX file and, when present, a torch module."""

    work: Path
    fp32_onnx: Path
    recipe: Recipe
    calibration: Dataset | None
    module: nn.Module | None = None
    input_names: tuple[str, ...] = ()
    sample: dict[str, np.ndarray] = field(default_factory=dict)  # one sample, for tracing
    check: Dataset | None = None  # evaluation data (single calls): the opset upgrade's check
    built: dict[str, BuiltFile] = field(default_factory=dict)

    def build(self, target: ArtifactTarget, notify: Callable[[str], None]) -> BuiltFile:
        if target in self.built:
            return self.built[target]
        notify(f"building {target}")
        builders: dict[str, Callable[[], BuiltFile]] = {
            "onnx-fp32": lambda: BuiltFile(target, self.fp32_onnx),
            "onnx-int8": self._onnx_int8,
            "onnx-fp16": lambda: BuiltFile(
                target, convert_onnx_fp16(self.fp32_onnx, self.work / "model-fp16.onnx")
            ),
            "tflite-fp32": self._tflite_fp32,
            "tflite-int8": self._tflite_int8,
            "tflite-full-int8": self._tflite_full_int8,
            "edgetpu": lambda: self._edgetpu(notify),
        }
        result = builders[target]()
        self.built[target] = result
        return result

    def _onnx_int8(self) -> BuiltFile:
        mode = choose_int8_mode(
            self.fp32_onnx, self.recipe.onnx_int8_mode, self.calibration is not None
        )
        calibration = None
        if mode == "static":
            calib = limit_calibration(self._require_calibration("onnx-int8 (static)"))
            calibration = calib.feeds(self._call_batch(calib))
        check: list[Feed] = []
        if self.check is not None:
            checked = self.check.take(slice(0, MAX_CHECK_SAMPLES))
            check = checked.feeds(self._call_batch(checked))
        return build_onnx_int8(
            self.fp32_onnx,
            self.work,
            mode,
            per_channel=self.recipe.per_channel_for(
                static=mode == "static", convolutional=self._conv()
            ),
            opset=self.recipe.opset,
            calibration=calibration,
            check=check or calibration or [],
        )

    def _call_batch(self, data: Dataset) -> int:
        """Samples per calibration or check call: FEED_BATCH where the graph's batch axes are
        dynamic, else 1."""
        signature = onnx_signature(onnx.load(str(self.fp32_onnx), load_external_data=False))
        return call_batch(signature, data.layout, FEED_BATCH)

    def _conv(self) -> bool:
        return has_op(self.fp32_onnx, {"Conv", "ConvTranspose"})

    def _torch(self, target: str) -> nn.Module:
        if self.module is None:
            raise CompressionError(f"{target} needs a torch model as input")
        return self.module

    def _sample(self) -> dict[str, np.ndarray]:
        if not self.sample:
            raise CompressionError("TFLite conversion needs a sample input to trace the model")
        return self.sample

    def _tflite_fp32(self) -> BuiltFile:
        dst = self.work / "model-fp32.tflite"
        export_tflite_fp32(self._torch("tflite-fp32"), self.input_names, self._sample(), dst)
        return BuiltFile("tflite-fp32", dst)

    def _tflite_int8(self) -> BuiltFile:
        dst = self.work / "model-int8.tflite"
        export_tflite_int8(
            self._torch("tflite-int8"),
            self.input_names,
            self._sample(),
            dst,
            calibration=None,
            per_channel=self.recipe.per_channel_for(static=False, convolutional=self._conv()),
            target="tflite-int8",
        )
        return BuiltFile("tflite-int8", dst, {"quantization": "dynamic-range (PT2E)"})

    def _tflite_full_int8(self) -> BuiltFile:
        calib = limit_calibration(self._require_calibration("tflite-full-int8"))
        dst = self.work / "model-full-int8.tflite"
        export_tflite_int8(
            self._torch("tflite-full-int8"),
            self.input_names,
            self._sample(),
            dst,
            calibration=single_samples(calib),
            per_channel=self.recipe.per_channel_for(static=True, convolutional=self._conv()),
            target="tflite-full-int8",
        )
        require_integer_io(dst)
        return BuiltFile(
            "tflite-full-int8",
            dst,
            {"quantization": "full integer (PT2E static)", "calibration_samples": calib.size},
        )

    def _edgetpu(self, notify: Callable[[str], None]) -> BuiltFile:
        full = self.build("tflite-full-int8", notify)
        compiled, counts = compile_edgetpu(full.path, self.work / "edgetpu")
        return BuiltFile(
            "edgetpu",
            compiled,
            {**counts, "evaluated_on": "the full-int8 CPU model (no Edge TPU on this machine)"},
            evaluate_as=full.path,
        )

    def _require_calibration(self, what: str) -> Dataset:
        return require_calibration(self.calibration, what)


@dataclass
class TfliteTargetBuilder:
    """Builds artifacts into ``work`` from a float TFLite ``source``: ``tflite-fp32`` is the file
    as given; the int8 targets come from ai-edge-quantizer; ``edgetpu`` is compiled from
    ``tflite-full-int8``. ``onnx-fp32`` is converted by tf2onnx (the ``tensorflow`` extra) and
    checked against the file on ``check``; the other ONNX targets are built from it as from an
    ONNX source, by ``recipe``."""

    work: Path
    source: Path
    calibration: Dataset | None
    recipe: Recipe | None = None  # needed for onnx-* targets
    check: Dataset | None = None  # evaluation data (single calls), needed for onnx-* targets
    built: dict[str, BuiltFile] = field(default_factory=dict)
    onnx: TargetBuilder | None = None

    def build(self, target: ArtifactTarget, notify: Callable[[str], None]) -> BuiltFile:
        if target.startswith("onnx-"):
            return self._onnx_builder(notify).build(target, notify)
        if target in self.built:
            return self.built[target]
        notify(f"building {target}")
        if target == "tflite-fp32":
            result = BuiltFile(target, self.source, {"built_from": "the source file, as given"})
        elif target == "tflite-int8":
            dst = self.work / "model-int8.tflite"
            details = quantize_tflite(
                self.source, dst, target, "dynamic", min_share=MIN_INT8_WEIGHT_SHARE
            )
            result = BuiltFile(target, dst, details)
        elif target == "tflite-full-int8":
            calib = limit_calibration(self._require_calibration(target))
            dst = self.work / "model-full-int8.tflite"
            details = quantize_tflite(
                self.source, dst, target, "static",
                calibration=single_samples(calib), min_share=MIN_INT8_WEIGHT_SHARE,
            )  # fmt: skip
            result = BuiltFile(target, dst, {**details, "calibration_samples": calib.size})
        elif target == "edgetpu":
            full = self.build("tflite-full-int8", notify)
            compiled, counts = compile_edgetpu(full.path, self.work / "edgetpu")
            result = BuiltFile(
                target, compiled,
                {**counts, "evaluated_on": "the full-int8 CPU model (no Edge TPU on this machine)"},
                evaluate_as=full.path,
            )  # fmt: skip
        else:
            raise CompressionError(f"{target} cannot be built from a TFLite source")
        self.built[target] = result
        return result

    def _require_calibration(self, what: str) -> Dataset:
        return require_calibration(self.calibration, what)

    def _onnx_builder(self, notify: Notify) -> TargetBuilder:
        """The ONNX targets' builder, over the tf2onnx conversion made on first use.

        Raises:
            MissingExtraError, UnconvertibleNodeError, ConversionError, SignatureMismatchError:
                see :func:`~edgefleet.controller.compress.tflite_to_onnx.tflite_to_onnx`.
        """
        if self.onnx is not None:
            return self.onnx
        from edgefleet.controller.compress.runners import LiteRtRunner
        from edgefleet.controller.compress.tflite_to_onnx import tflite_to_onnx

        if self.recipe is None or self.check is None:
            raise CompressionError(
                "ONNX targets of a TFLite source need a recipe and evaluation data"
            )
        notify("converting TFLite to ONNX (tf2onnx)")
        dst = self.work / "model-fp32.onnx"
        signature = LiteRtRunner(self.source).signature
        details = tflite_to_onnx(self.source, signature, dst, self.recipe.opset, self.check)
        self.onnx = TargetBuilder(self.work, dst, self.recipe, self.calibration, check=self.check)
        self.onnx.built["onnx-fp32"] = BuiltFile("onnx-fp32", dst, details)
        return self.onnx


def require_integer_io(path: Path) -> None:
    """The Edge TPU needs integer tensors at the model's boundary; refuse anything else.

    Raises:
        ConversionError: naming the float tensors left at the model's boundary.
    """
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    details = {**runner.get_input_details(), **runner.get_output_details()}
    floating = sorted(n for n, d in details.items() if np.issubdtype(d["dtype"], np.floating))
    if floating:
        raise ConversionError("tflite-full-int8", f"float tensors left at the boundary: {floating}")


def require_calibration(calibration: Dataset | None, what: str) -> Dataset:
    """Raises: CompressionError: no calibration data (evaluation data never calibrates)."""
    if calibration is None:
        raise CompressionError(
            f"{what} needs calibration data (--calib DATA.npz, or --train); evaluation data "
            "is held out and never used to calibrate"
        )
    return calibration


def limit_calibration(data: Dataset) -> Dataset:
    """The first :data:`MAX_CALIBRATION_SAMPLES` samples."""
    return data.take(slice(0, MAX_CALIBRATION_SAMPLES))


def single_samples(data: Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Each sample as one call at batch 1, named as the model's inputs."""
    for i in range(data.size):
        yield data.sample_feed(i)


def build_onnx_int8(
    fp32: Path,
    work: Path,
    mode: Literal["dynamic", "static"],
    *,
    per_channel: bool,
    opset: int,
    calibration: Sequence[Feed] | None,
    check: Sequence[Feed],
) -> BuiltFile:
    """``onnx-int8`` from an fp32 graph: opset upgrade (checked on ``check``), quantization, and
    proof that the heavy operators now hold int8 weights and the result runs. Static mode
    builds QDQ and QOperator from one calibration and keeps the smaller unless it is worse on
    ``check`` (details: ``quant_format`` and ``quant_format_choice``).

    Raises:
        OpsetUpgradeError: below opset 10 and the upgrade fails or changes the outputs.
        Int8CoverageError: the mode leaves most heavy weights in float (nothing worth shipping).
        QuantizationBlockedError: a node or input stops the quantizer or the quantized model.
        ConversionError: the quantizer fails in a way that names no node.
    """
    check_feeds(fp32, [*check, *(calibration or ())])
    upgrade = upgrade_opset(fp32, work, opset, check)
    details: dict[str, Any] = {"quantization": mode, **upgrade.details()}
    if upgrade.failure and upgrade.from_opset < QUANTIZER_MIN_OPSET:
        raise OpsetUpgradeError("onnx-int8", upgrade.from_opset, upgrade.failure)
    if per_channel and mode == "static" and upgrade.to_opset < PER_CHANNEL_OPSET:
        per_channel = False
        details["per_channel_fallback"] = (
            f"per-tensor weight scales: per-channel needs opset {PER_CHANNEL_OPSET} and the "
            f"upgrade from opset {upgrade.from_opset} was not kept ({upgrade.failure})"
        )
    details["per_channel"] = per_channel
    dst = work / f"model-int8-{mode}.onnx"
    if mode == "static":
        if not calibration:
            raise CompressionError("onnx-int8 (static) needs calibration data")
        details.update(_static_int8(upgrade.path, dst, work, calibration, check, per_channel))
    else:
        quantize_onnx_dynamic(upgrade.path, dst, work, per_channel=per_channel)
        # onnxruntime's dynamic quantizer has one format: integer operators (MatMulInteger,
        # DynamicQuantizeLSTM); weight-only convolutions read DequantizeLinear
        details["quant_format"] = "QOperator"
        details["compacted_bytes"] = compact_file(dst)
    found = heavy_ops(onnx.load(str(upgrade.path)))
    coverage = int8_coverage(onnx.load(str(dst)))
    details.update(coverage.as_details(), heavy_ops=found)
    _require_int8_weights(mode, found, coverage)
    feed = next(iter(check or calibration or ()), None)
    if feed is not None:
        run_feed(ort_session(dst), feed)
    return BuiltFile("onnx-int8", dst, details)


def _static_int8(
    src: Path,
    dst: Path,
    work: Path,
    calibration: Sequence[Feed],
    check: Sequence[Feed],
    per_channel: bool,
) -> dict[str, Any]:
    """Static int8 in both formats from one calibration, each with the dynamic pass for what it
    left float and compacted; the one :func:`choose_static_format` keeps becomes ``dst``. The
    details: the format, the choice's figures, what the dynamic pass took, the bytes compaction
    saved."""
    details: dict[str, Any] = {}
    finals: dict[QuantFormatName, Path] = {}
    leftovers: dict[QuantFormatName, list[str]] = {}
    compacted: dict[QuantFormatName, int] = {}
    refused: dict[QuantFormatName, str] = {}
    built = quantize_onnx_static(src, work, calibration, per_channel=per_channel)
    for name, path in built.items():
        left = static_kernels_left(path)
        if left:
            refused[name] = f"static quantization left {', '.join(left)}"
        final = path.with_name(f"{path.stem}-final.onnx")
        leftovers[name] = quantize_leftovers_dynamic(path, final, per_channel=per_channel)
        if not leftovers[name]:
            path.replace(final)
        compacted[name] = compact_file(final)
        finals[name] = final
    choice = choose_static_format(src, finals, check or calibration, refused)
    finals[choice.kept].replace(dst)
    details.update(choice.as_details(), compacted_bytes=compacted[choice.kept])
    if leftovers[choice.kept]:
        names = leftovers[choice.kept]
        details["dynamic_int8_nodes"] = {"count": len(names), "first": names[:8]}
    return details


def _require_int8_weights(
    mode: Literal["dynamic", "static"], found: dict[str, int], coverage: Int8Coverage
) -> None:
    """Refuse an int8 artifact whose heavy weights are mostly float: it would be the float model
    under another name (1.00x, nothing quantized that matters)."""
    if found and coverage.weight_share >= MIN_INT8_WEIGHT_SHARE:
        return
    if not found:
        reason = "It has no Conv, MatMul, Gemm or recurrent operator with constant weights."
    elif mode == "dynamic" and {"Conv", "ConvTranspose"} & set(found):
        reason = (
            "Dynamic mode quantizes MatMul, Gemm and LSTM only (onnxruntime has no fast CPU "
            "kernel for dynamically quantized convolutions); give calibration data (--calib) "
            "and use static mode (--int8-mode static)."
        )
    elif mode == "static" and coverage.float_in_subgraphs:
        holders = ", ".join(repr(h) for h in coverage.float_in_subgraphs)
        reason = (
            f"Heavy operators inside the subgraphs of {holders} stayed float: static "
            "quantization does not enter If/Loop/Scan subgraphs (only MatMul and LSTM there get "
            "dynamic int8 weights)."
        )
    else:
        reason = "The quantizer skipped them."
    raise Int8CoverageError(
        "onnx-int8",
        mode,
        found,
        coverage.quantized_ops,
        coverage.weight_share,
        f"{reason} An int8 artifact needs at least {MIN_INT8_WEIGHT_SHARE:.0%} of those "
        "weights in int8.",
    )


def batched_feeds(inputs: dict[str, np.ndarray], batch: int = FEED_BATCH) -> list[Feed]:
    """Model calls of up to ``batch`` samples each, from batch-first inputs."""
    return Dataset(inputs).feeds(batch) if inputs else []
