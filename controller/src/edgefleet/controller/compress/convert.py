"""Conversion of torch modules to ONNX (``torch.onnx.export``) and to TFLite (litert-torch, with
PT2E int8 quantization), and compilation of full-int8 TFLite for the Edge TPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefleet.controller.compress.distill import as_eval
from edgefleet.controller.errors import ConversionError, MissingExtraError, ToolNotFoundError

EDGETPU_COMPILER = "edgetpu_compiler"
EDGETPU_INSTALL_HINT = (
    "the edgetpu target needs the Edge TPU compiler: on x86-64 Debian/Ubuntu install the "
    "'edgetpu-compiler' package from Coral's apt repository (https://coral.ai/docs/edgetpu/compiler/)"
    " and make sure edgetpu_compiler is on PATH"
)
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
TFLITE_EXTRA = "tflite"
TFLITE_EXTRA_MODULES = ("litert_torch", "torchao")


def require_litert_torch(needed_for: str) -> None:
    """Check that litert-torch and torchao (the ``tflite`` extra) can be imported.

    Raises:
        MissingExtraError: one is not installed, naming the extra.
    """
    import importlib

    for name in TFLITE_EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            package = name.replace("_", "-")
            raise MissingExtraError(needed_for, package, TFLITE_EXTRA, str(e)) from e


def export_onnx(
    module: nn.Module,
    input_names: tuple[str, ...],
    sample: dict[str, np.ndarray],
    output_count: int,
    dst: Path,
    *,
    opset: int,
) -> Path:
    """``torch.onnx.export`` (TorchScript exporter) with a dynamic batch dimension."""
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in input_names)
    output_names = [f"output_{i}" for i in range(output_count)]
    axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript;
            # its advice on constant folding and tracing is for model authors, not operators.
            _quiet_converter_warnings()
            _torch_onnx_export(
                as_eval(module),
                args,
                str(dst),
                input_names=list(input_names),
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
                # as_eval() set the flags already; torch.export modules refuse .train()
                training=torch.onnx.TrainingMode.PRESERVE,
            )
    except Exception as e:
        raise ConversionError("onnx-fp32", f"torch.onnx.export: {e}") from e
    return dst


def _quiet_converter_warnings() -> None:
    """Inside converter calls only: their warnings (tracer, deprecations) address the authors of
    the model and the converters, not an operator compressing it, and would bury the report."""
    warnings.simplefilter("ignore")


def _torch_onnx_export(*args: Any, **kwargs: Any) -> None:
    torch.onnx.export(*args, **kwargs)


class NamedInputs(nn.Module):
    """Calls a module positionally from keyword inputs, so exported programs carry the model's
    input names (``nn.Sequential`` would otherwise name its only input ``input``)."""

    def __init__(self, inner: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.names = names

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        result: torch.Tensor | tuple[torch.Tensor, ...] = self.inner(
            *(inputs[n] for n in self.names)
        )
        return result


def _sample_kwargs(
    input_names: tuple[str, ...], sample: dict[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.ascontiguousarray(sample[n][:1])) for n in input_names}


def export_tflite_fp32(
    module: nn.Module, input_names: tuple[str, ...], sample: dict[str, np.ndarray], dst: Path
) -> Path:
    """float32 TFLite at batch 1, inputs named like the model's."""
    require_litert_torch("tflite-fp32 from a torch model")
    import litert_torch

    named = as_eval(NamedInputs(module, input_names))
    try:
        with warnings.catch_warnings():
            _quiet_converter_warnings()
            edge = litert_torch.convert(
                named, (), sample_kwargs=_sample_kwargs(input_names, sample)
            )
            edge.export(str(dst))
    except Exception as e:
        raise ConversionError("tflite-fp32", f"litert-torch: {e}") from e
    return dst


def export_tflite_int8(
    module: nn.Module,
    input_names: tuple[str, ...],
    sample: dict[str, np.ndarray],
    dst: Path,
    *,
    calibration: Iterable[dict[str, np.ndarray]] | None,
    per_channel: bool,
    target: str,
) -> Path:
    """PT2E int8 TFLite: dynamic-range (weights int8, float IO) when ``calibration`` is None,
    else full integer with calibrated activations and int8 inputs/outputs."""
    require_litert_torch(f"{target} from a torch model")
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import (  # type: ignore[import-untyped]
        move_exported_model_to_eval,
        quantize_pt2e,
    )

    kwargs = _sample_kwargs(input_names, sample)
    dynamic = calibration is None
    try:
        with warnings.catch_warnings():
            _quiet_converter_warnings()
            named = as_eval(NamedInputs(module, input_names))
            exported = torch.export.export(named, (), kwargs).module()
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(
                    is_per_channel=per_channel, is_dynamic=dynamic
                )
            )
            prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
            for batch in calibration or ():
                prepared(
                    **{n: torch.from_numpy(np.ascontiguousarray(batch[n])) for n in input_names}
                )
            if dynamic:
                prepared(**kwargs)
            converted = as_eval(
                move_exported_model_to_eval(
                    quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
                )
            )
            edge = litert_torch.convert(
                converted,
                (),
                sample_kwargs=kwargs,
                quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer),
            )
            edge.export(str(dst))
    except Exception as e:
        raise ConversionError(target, f"litert-torch PT2E: {e}") from e
    return dst


def require_edgetpu_compiler() -> str:
    """Path of ``edgetpu_compiler``.

    Raises:
        ToolNotFoundError: it is not on PATH (with what to install).
    """
    found = shutil.which(EDGETPU_COMPILER)
    if found is None:
        raise ToolNotFoundError(EDGETPU_COMPILER, EDGETPU_INSTALL_HINT)
    return found


def compile_edgetpu(
    full_int8: Path, out_dir: Path, timeout_s: float = 300.0
) -> tuple[Path, dict[str, int]]:
    """Compile a full-int8 TFLite for the Edge TPU; returns the model and the op counts.

    Raises:
        ToolNotFoundError: the compiler is not installed.
        ConversionError: the compiler fails or writes no model.
    """
    compiler = require_edgetpu_compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [compiler, "-s", "-o", str(out_dir), str(full_int8)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ConversionError("edgetpu", f"edgetpu_compiler timed out after {timeout_s} s") from e
    if proc.returncode != 0:
        raise ConversionError(
            "edgetpu", f"edgetpu_compiler exit {proc.returncode}: {proc.stderr[-500:]}"
        )
    compiled = out_dir / f"{full_int8.stem}_edgetpu.tflite"
    if not compiled.is_file():
        raise ConversionError("edgetpu", f"edgetpu_compiler wrote no {compiled.name}")
    return compiled, parse_edgetpu_log(proc.stdout)


def parse_edgetpu_log(text: str) -> dict[str, int]:
    """Op counts from the compiler's summary (``-s``)."""
    counts: dict[str, int] = {}
    for key, pattern in (
        ("ops_on_edgetpu", r"Number of operations that will run on Edge TPU:\s*(\d+)"),
        ("ops_on_cpu", r"Number of operations that will run on CPU:\s*(\d+)"),
    ):
        match = re.search(pattern, text)
        if match:
            counts[key] = int(match.group(1))
    return counts
