"""Artifacts of a Keras or SavedModel source: LiteRT files from TensorFlow's TFLiteConverter
(float, dynamic-range int8 with ``Optimize.DEFAULT``, full integer with int8 IO calibrated on
``--calib`` samples; Edge TPU compiled from that) and an fp32 ONNX graph from tf2onnx, from which
the ONNX targets are built as for any ONNX model. Every file is converted from the serving
signature, its tensors named as the signature's (checked here, mapped where a converter renames)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from edgefleet.controller.compress.built import BuiltFile, Notify
from edgefleet.controller.compress.convert import compile_edgetpu
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.keras_source import SERVING, ServingModel
from edgefleet.controller.compress.recipe import Recipe
from edgefleet.controller.compress.targets import (
    MIN_INT8_WEIGHT_SHARE,
    TargetBuilder,
    limit_calibration,
    require_calibration,
    require_integer_io,
    single_samples,
)
from edgefleet.controller.compress.tensorflow_extra import (
    captured_output,
    import_tensorflow,
    import_tf2onnx,
    log_tail,
)
from edgefleet.controller.compress.tflite_quantize import tflite_int8_coverage
from edgefleet.controller.errors import ConversionError, Int8CoverageError
from edgefleet.shared.manifest import ArtifactTarget

TfliteMode = Literal["float", "dynamic", "full"]
_FILES: dict[TfliteMode, str] = {
    "float": "model-fp32.tflite",
    "dynamic": "model-int8.tflite",
    "full": "model-full-int8.tflite",
}


@dataclass
class KerasTfliteBuilder:
    """LiteRT artifacts of a serving model, from TFLiteConverter."""

    work: Path
    serving: ServingModel
    calibration: Dataset | None
    built: dict[str, BuiltFile] = field(default_factory=dict)

    def build(self, target: ArtifactTarget, notify: Notify) -> BuiltFile:
        if target in self.built:
            return self.built[target]
        notify(f"building {target}")
        tf = import_tensorflow(f"building {target}")
        converter = f"TFLiteConverter (TensorFlow {tf.__version__})"
        if target == "tflite-fp32":
            dst = convert_tflite(self.serving, self.work, "float")
            result = BuiltFile(target, dst, {"built_from": f"the serving signature by {converter}"})
        elif target == "tflite-int8":
            dst = convert_tflite(self.serving, self.work, "dynamic")
            details = _int8_details(target, "dynamic-range", self.fp32(notify), dst)
            quantization = f"dynamic-range, {converter} Optimize.DEFAULT"
            result = BuiltFile(target, dst, {"quantization": quantization, **details})
        elif target == "tflite-full-int8":
            calib = limit_calibration(require_calibration(self.calibration, target))
            dst = convert_tflite(self.serving, self.work, "full", single_samples(calib))
            require_integer_io(dst)
            details = _int8_details(target, "full integer", self.fp32(notify), dst)
            result = BuiltFile(
                target, dst,
                {"quantization": f"full integer, int8 IO, {converter} with a representative "
                 "dataset", **details, "calibration_samples": calib.size},
            )  # fmt: skip
        else:  # edgetpu
            full = self.build("tflite-full-int8", notify)
            compiled, counts = compile_edgetpu(full.path, self.work / "edgetpu")
            result = BuiltFile(
                target, compiled,
                {**counts, "evaluated_on": "the full-int8 CPU model (no Edge TPU on this machine)"},
                evaluate_as=full.path,
            )  # fmt: skip
        self.built[target] = result
        return result

    def fp32(self, notify: Notify) -> Path:
        """The float TFLite file (the weights an int8 file is measured against)."""
        return self.build("tflite-fp32", notify).path


def keras_onnx_builder(
    work: Path, serving: ServingModel, recipe: Recipe, calibration: Dataset | None,
    check: Dataset, notify: Notify,
) -> TargetBuilder:  # fmt: skip
    """The ONNX targets of a serving model: ``onnx-fp32`` from tf2onnx, the others from it."""
    notify("converting to ONNX (tf2onnx)")
    fp32 = convert_onnx(serving, work / "model-fp32.onnx", recipe.opset)
    return TargetBuilder(work, fp32, recipe, calibration, check=check)


def convert_tflite(
    serving: ServingModel,
    work: Path,
    mode: TfliteMode,
    calibration: Iterable[dict[str, np.ndarray]] = (),
) -> Path:
    """One TFLite file from the serving signature: float, dynamic-range int8 weights, or full
    integer (int8 weights and activations, int8 IO) calibrated on single-sample ``calibration``.

    Raises:
        ConversionError: TFLiteConverter fails (with the end of its message).
    """
    target = {"float": "tflite-fp32", "dynamic": "tflite-int8", "full": "tflite-full-int8"}[mode]
    tf = import_tensorflow(f"building {target}")
    dst = work / _FILES[mode]
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(serving.saved_model), signature_keys=[SERVING]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "full":
        samples = list(calibration)
        if not samples:
            raise ConversionError(target, "no calibration samples")
        converter.representative_dataset = lambda: iter(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    log = work / f"{dst.stem}-convert.log"
    try:
        with captured_output(log):
            content = converter.convert()
    except Exception as e:  # TensorFlow raises many unrelated types
        raise ConversionError(target, f"TFLiteConverter: {log_tail(str(e))}") from e
    dst.write_bytes(content)
    return dst


def _int8_details(target: str, mode: str, fp32: Path, dst: Path) -> dict[str, Any]:
    """The int8 file's weight coverage, refused when its heavy operators stayed float (the
    converter leaves small tensors float: a model of small layers gains nothing).

    Raises:
        Int8CoverageError: under :data:`MIN_INT8_WEIGHT_SHARE` of the heavy weights are int8.
    """
    found = tflite_int8_coverage(fp32)
    coverage = tflite_int8_coverage(dst)
    if not found.heavy_ops or coverage.weight_share < MIN_INT8_WEIGHT_SHARE:
        reason = (
            "TFLiteConverter left them float (it keeps tensors of under 1024 values float)."
            if found.heavy_ops
            else "It has no convolution, fully-connected or matrix-product operator with "
            "constant weights."
        )
        raise Int8CoverageError(
            target, mode, found.heavy_ops, coverage.quantized_ops, coverage.weight_share,
            f"{reason} An int8 artifact needs at least {MIN_INT8_WEIGHT_SHARE:.0%} of those "
            "weights in int8.",
        )  # fmt: skip
    return {**coverage.as_details(), "heavy_ops": found.heavy_ops}


def convert_onnx(serving: ServingModel, dst: Path, opset: int) -> Path:
    """fp32 ONNX from the serving signature with tf2onnx, its inputs and outputs named as the
    signature's (tf2onnx keeps the names; where it does not, outputs are mapped by position,
    which is the signature's name order, and inputs must still match by name).

    Raises:
        ConversionError: tf2onnx fails, or its inputs do not match the signature's.
    """
    tf = import_tensorflow("building onnx-fp32")
    tf2onnx = import_tf2onnx("building onnx-fp32")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    names = [s.name for s in serving.signature.inputs]
    _, kwargs = serving.function.structured_input_signature
    specs = [tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n) for n in names]
    function = serving.function

    # No AutoGraph: nothing to convert here, and it writes each converted function to /tmp.
    @tf.function(input_signature=specs, autograph=False)  # type: ignore[untyped-decorator]
    def serve(*args: Any) -> Any:
        return function(**dict(zip(names, args, strict=True)))

    try:
        with captured_output(dst.with_suffix(".log")):
            model, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset)
    except Exception as e:  # tf2onnx and TensorFlow raise many unrelated types
        raise ConversionError("onnx-fp32", f"tf2onnx: {log_tail(str(e))}") from e
    _name_like_signature(model, serving)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError("onnx-fp32", f"tf2onnx wrote an invalid graph: {e}") from e
    onnx.save(model, str(dst))
    return dst


def _name_like_signature(model: onnx.ModelProto, serving: ServingModel) -> None:
    """Rename the graph's inputs and outputs to the signature's names, outputs in its order.

    Raises:
        ConversionError: the inputs do not match by name, or the output count differs.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in initializers]
    want_in = [s.name for s in serving.signature.inputs]
    renames = {n: n.split(":")[0] for n in inputs if n.split(":")[0] in want_in}
    if sorted(renames.values()) != sorted(want_in):
        raise ConversionError(
            "onnx-fp32", f"tf2onnx named the inputs {inputs}, the signature's are {want_in}"
        )
    want_out = [s.name for s in serving.signature.outputs]
    outputs = [v.name for v in graph.output]
    if len(outputs) != len(want_out):
        raise ConversionError(
            "onnx-fp32", f"tf2onnx made {len(outputs)} outputs of the signature's {len(want_out)}"
        )
    if set(outputs) == set(want_out):  # named as the signature's: put them in its order
        by_name = {v.name: v for v in graph.output}
        ordered = [onnx.ValueInfoProto() for _ in want_out]
        for value, name in zip(ordered, want_out, strict=True):
            value.CopyFrom(by_name[name])
        graph.ClearField("output")
        graph.output.extend(ordered)
    else:  # tf2onnx lists them in the signature's order (its flattening); name them so
        renames.update(zip(outputs, want_out, strict=True))
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
