"""Build one artifact file per target from the working model (torch module or ONNX graph)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgefleet.controller.compress.convert import (
    compile_edgetpu,
    export_tflite_fp32,
    export_tflite_int8,
)
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.quantize import (
    choose_int8_mode,
    convert_onnx_fp16,
    has_op,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from edgefleet.controller.compress.recipe import Recipe
from edgefleet.controller.errors import CompressionError, ConversionError
from edgefleet.shared.manifest import ArtifactTarget

MAX_CALIBRATION_SAMPLES = 256


@dataclass
class BuiltFile:
    target: ArtifactTarget
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    evaluate_as: Path | None = None  # a CPU-runnable stand-in (edgetpu -> its full-int8 source)


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
        dst = self.work / f"model-int8-{mode}.onnx"
        if mode == "static":
            calib = self._require_calibration("onnx-int8 (static)")
            quantize_onnx_static(
                self.fp32_onnx,
                dst,
                self.work,
                _limit(calib).inputs,
                per_channel=self.recipe.per_channel_for(static=True, convolutional=self._conv()),
                batch_size=32,
            )
        else:
            quantize_onnx_dynamic(
                self.fp32_onnx,
                dst,
                self.work,
                per_channel=self.recipe.per_channel_for(static=False, convolutional=self._conv()),
            )
        per_channel = self.recipe.per_channel_for(
            static=mode == "static", convolutional=self._conv()
        )
        return BuiltFile("onnx-int8", dst, {"quantization": mode, "per_channel": per_channel})

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
        calib = _limit(self._require_calibration("tflite-full-int8"))
        dst = self.work / "model-full-int8.tflite"
        export_tflite_int8(
            self._torch("tflite-full-int8"),
            self.input_names,
            self._sample(),
            dst,
            calibration=_single_samples(calib),
            per_channel=self.recipe.per_channel_for(static=True, convolutional=self._conv()),
            target="tflite-full-int8",
        )
        _require_integer_io(dst)
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
        if self.calibration is None:
            raise CompressionError(
                f"{what} needs calibration data (--calib DATA.npz, or --train); evaluation data "
                "is held out and never used to calibrate"
            )
        return self.calibration


def _require_integer_io(path: Path) -> None:
    """The Edge TPU needs integer tensors at the model's boundary; refuse anything else."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    details = {**runner.get_input_details(), **runner.get_output_details()}
    floating = sorted(n for n, d in details.items() if np.issubdtype(d["dtype"], np.floating))
    if floating:
        raise ConversionError("tflite-full-int8", f"float tensors left at the boundary: {floating}")


def _limit(data: Dataset) -> Dataset:
    return data.take(slice(0, MAX_CALIBRATION_SAMPLES))


def _single_samples(data: Dataset) -> Iterator[dict[str, np.ndarray]]:
    for i in range(data.size):
        yield {k: v[i : i + 1] for k, v in data.inputs.items()}
