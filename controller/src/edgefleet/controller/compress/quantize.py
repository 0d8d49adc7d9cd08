"""ONNX quantization with onnxruntime's tools: dynamic int8, static int8 QDQ, and float16.

Every path runs ``quant_pre_process`` (shape inference + graph optimisation) first. Dynamic mode
quantizes MatMul only, because CPU onnxruntime cannot run ConvInteger and its dynamic quantizer
skips Gemm; Gemm nodes with constant weights are rewritten as MatMul + Add first so that fully
connected layers are quantized too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from edgefleet.controller.errors import ConversionError

log = logging.getLogger(__name__)


class NpzCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration batches (dicts of named arrays) to onnxruntime's calibrator."""

    def __init__(self, inputs: dict[str, np.ndarray], batch_size: int) -> None:
        self._inputs = inputs
        self._batch_size = batch_size
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        n = next(iter(self._inputs.values())).shape[0]
        for start in range(0, n, self._batch_size):
            yield {k: v[start : start + self._batch_size] for k, v in self._inputs.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


def preprocess(src: Path, dst: Path) -> Path:
    """``quant_pre_process``, falling back to ONNX shape inference if symbolic inference fails."""
    try:
        quant_pre_process(str(src), str(dst))
    except Exception as e:  # noqa: BLE001 - symbolic shape inference raises assorted errors
        log.warning("symbolic shape inference failed (%s); using ONNX shape inference only", e)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def has_op(model_path: Path, op_types: set[str]) -> bool:
    return any(n.op_type in op_types for n in onnx.load(str(model_path)).graph.node)


def quantize_onnx_dynamic(src: Path, dst: Path, work: Path, *, per_channel: bool) -> Path:
    """Dynamic int8: int8 weights, activations quantized at run time (MatMul)."""
    pre = preprocess(src, work / "dynamic-pre.onnx")
    rewritten = work / "dynamic-matmul.onnx"
    onnx.save(gemm_to_matmul(onnx.load(str(pre))), str(rewritten))
    try:
        quantize_dynamic(
            rewritten,
            dst,
            op_types_to_quantize=["MatMul"],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
        )
    except Exception as e:
        raise ConversionError("onnx-int8", f"dynamic quantization: {e}") from e
    return dst


def quantize_onnx_static(
    src: Path,
    dst: Path,
    work: Path,
    calibration: dict[str, np.ndarray],
    *,
    per_channel: bool,
    batch_size: int,
) -> Path:
    """Static int8 QDQ: int8 weights (per channel when asked) and calibrated int8 activations."""
    pre = preprocess(src, work / "static-pre.onnx")
    reader = NpzCalibrationReader(calibration, batch_size)
    try:
        quantize_static(
            pre,
            dst,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    except Exception as e:
        raise ConversionError("onnx-int8", f"static quantization: {e}") from e
    return dst


def convert_onnx_fp16(src: Path, dst: Path) -> Path:
    """float16 weights and compute, float32 inputs and outputs (``keep_io_types``)."""
    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    except Exception as e:
        raise ConversionError("onnx-fp16", str(e)) from e
    onnx.save(model, str(dst))
    return dst


def choose_int8_mode(
    model_path: Path, mode: Literal["auto", "dynamic", "static"], has_calibration: bool
) -> Literal["dynamic", "static"]:
    """Static when asked, or in ``auto`` for convolutional graphs with calibration data."""
    if mode != "auto":
        return mode
    if has_calibration and has_op(model_path, {"Conv", "ConvTranspose"}):
        return "static"
    return "dynamic"


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, B, C)`` with constant B, alpha = beta = 1, transA = 0 as MatMul + Add."""
    inits = {i.name: i for i in model.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rewritable = (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and attrs.get("transA", 0) == 0
        )
        if not rewritable:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(weight), weight_name)
        )
        replaced.add(node.input[1])
        has_bias = len(node.input) > 2 and node.input[2] != ""
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], weight_name], [matmul_out], name=f"{node.name}_mm"
            )
        )
        if has_bias:
            new_nodes.append(
                helper.make_node(
                    "Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_add"
                )
            )
    still_used = {i for n in new_nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name not in replaced or i.name in still_used]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
