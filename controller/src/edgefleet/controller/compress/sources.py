"""The model to compress: an ONNX file, a float TFLite file, a torch module (Python API,
TorchScript file, torch.export archive), or, with the ``tensorflow`` extra, a Keras model
(``.keras``, ``.h5``) or a TensorFlow SavedModel directory.
"""

from __future__ import annotations

import inspect
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from onnx import helper

from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.external_data import PackedExternalData, pack_external_data
from edgefleet.controller.compress.tflite_file import (
    EDGETPU_CUSTOM_OP,
    WEIGHT_DTYPES,
    TfliteContents,
    is_tflite,
    read_tflite,
)
from edgefleet.controller.errors import DataMismatchError, MissingExtraError, ModelLoadError
from edgefleet.shared.manifest import DType, IOSignature, TensorSpec

if TYPE_CHECKING:
    from torch import nn

TorchKind = Literal["eager", "torchscript", "exported"]
KerasKind = Literal["keras", "h5", "saved_model"]
KERAS_FORMATS: dict[KerasKind, str] = {
    "keras": "Keras (.keras)",
    "h5": "Keras (legacy .h5)",
    "saved_model": "TensorFlow SavedModel",
}
_DTYPES: frozenset[str] = frozenset(
    ("float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
)


@dataclass(frozen=True)
class OnnxSource:
    """An ONNX model read from disk and checked, its external data (if any) packed into
    ``model``, which is self-contained."""

    path: Path
    model: onnx.ModelProto
    signature: IOSignature
    external_data: PackedExternalData | None = None


@dataclass(frozen=True)
class TorchSource:
    """A torch module in eval mode and the names of its positional inputs, in order."""

    module: nn.Module
    input_names: tuple[str, ...]
    description: str = "torch module"
    kind: TorchKind = "eager"

    @property
    def eager(self) -> bool:
        """An ordinary ``nn.Module`` whose layers torch-pruning and litert-torch can see."""
        return self.kind == "eager"


@dataclass(frozen=True)
class TfliteSource:
    """A float TFLite model read from disk: its signature as LiteRT names its tensors (by its
    serving signature when it has exactly one, else by the tensors' own names)."""

    path: Path
    signature: IOSignature
    contents: TfliteContents

    @property
    def params(self) -> int:
        return sum(self.contents.constants.get(d, 0) for d in WEIGHT_DTYPES)


@dataclass(frozen=True)
class KerasSource:
    """A Keras model or a SavedModel read from disk (``model``: the ``keras.Model``, or what
    ``tf.saved_model.load`` returned); :mod:`.keras_source` loads and converts it."""

    path: Path
    kind: KerasKind
    model: Any

    @property
    def format(self) -> str:
        return KERAS_FORMATS[self.kind]


ModelSource = OnnxSource | TorchSource | TfliteSource | KerasSource


def dtype_name(dtype: np.dtype | type) -> DType:
    """The wire dtype name of a numpy dtype.

    Raises:
        DataMismatchError: the dtype has no wire name (e.g. complex or string).
    """
    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise DataMismatchError(f"dtype {name} is not supported on the wire")
    return name  # type: ignore[return-value]


def import_torch(needed_for: str) -> ModuleType:
    """torch, which only the ``compress`` extra installs (the controller imports it only for a
    step that needs it).

    Raises:
        MissingExtraError: torch is not installed, naming the extra.
    """
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError(needed_for, "torch", "compress", str(e)) from e
    return torch


def onnx_source(path: Path) -> OnnxSource:
    """Load and check an ONNX model, with any external data packed into it (read only from
    the files beside it, see :func:`~.external_data.pack_external_data`).

    Raises:
        ModelLoadError: missing file, or not a valid ONNX model.
        ExternalDataError: external data outside the model's directory, missing or short,
            naming the tensor and the file.
        ModelTooLargeError: with its external data embedded it is over protobuf's 2 GB limit.
    """
    if not path.is_file():
        raise ModelLoadError(str(path), "file does not exist")
    failures = (onnx.checker.ValidationError, DecodeError, OSError, ValueError, RuntimeError)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except failures as e:
        raise ModelLoadError(str(path), f"not a valid ONNX model ({e})") from e
    external = pack_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except failures as e:
        raise ModelLoadError(str(path), f"not a valid ONNX model ({e})") from e
    if not model.graph.node:
        raise ModelLoadError(str(path), "ONNX graph has no nodes")
    return OnnxSource(
        path=path, model=model, signature=onnx_signature(model), external_data=external
    )


def tflite_source(path: Path) -> TfliteSource:
    """Load a float TFLite model (float16 or float32 weights, float IO) to compress.

    Raises:
        ModelLoadError: missing, not a TFLite model LiteRT can run, or not float: an Edge TPU
            model, a full-integer one (quantized integer IO) or one with int8 weights is
            registered as it is with ``model import``.
    """
    from edgefleet.controller.compress.runners import LiteRtRunner
    from edgefleet.controller.errors import ConversionError

    if not path.is_file():
        raise ModelLoadError(str(path), "file does not exist")
    if not is_tflite(path):
        raise ModelLoadError(str(path), "not a TFLite flatbuffer (no TFL3 identifier)")
    contents = read_tflite(path)
    register = "register it as it is with `edgefleet model import NAME:VERSION --artifact"
    if contents.edgetpu_ops:
        raise ModelLoadError(
            str(path),
            f"compiled for the Edge TPU ({contents.edgetpu_ops} {EDGETPU_CUSTOM_OP} operators): "
            f"nothing to compress; {register} edgetpu=PATH`",
        )
    try:
        runner = LiteRtRunner(path)
    except ConversionError as e:
        raise ModelLoadError(str(path), e.reason) from e
    quantized = _quantized_io(path)
    if quantized:
        raise ModelLoadError(
            str(path),
            f"a full-integer model (quantized integer tensors at its boundary: {quantized}), "
            f"not a float one to compress; {register} tflite-full-int8=PATH`",
        )
    weights = sum(contents.constants.get(d, 0) for d in WEIGHT_DTYPES)
    int8 = contents.constants.get("int8", 0) + contents.constants.get("uint8", 0)
    if weights and int8 / weights >= 0.5:
        raise ModelLoadError(
            str(path),
            f"already quantized ({int8 / weights:.0%} of its {weights:,} weight values are "
            f"8-bit integers), not a float model to compress; {register} tflite-int8=PATH`",
        )
    return TfliteSource(path=path, signature=runner.signature, contents=contents)


def _quantized_io(path: Path) -> list[str]:
    """Input and output tensors holding quantized integers (an integer dtype with a scale)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = (*interpreter.get_input_details(), *interpreter.get_output_details())
    return sorted(
        str(d["name"])
        for d in details
        if d["quantization"][0] and np.issubdtype(np.dtype(d["dtype"]), np.integer)
    )


def onnx_signature(model: onnx.ModelProto) -> IOSignature:
    """Inputs (initializers excluded) and outputs of an ONNX graph; symbolic dims become None."""
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        np_dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        )
        return TensorSpec(name=value.name, dtype=dtype_name(np_dtype), shape=dims)

    return IOSignature(
        inputs=tuple(spec(v) for v in model.graph.input if v.name not in initializers),
        outputs=tuple(spec(v) for v in model.graph.output),
    )


def torch_source(module: nn.Module, input_names: tuple[str, ...] | None = None) -> TorchSource:
    """Wrap a module; input names default to the parameters of its ``forward``."""
    from edgefleet.controller.compress.distill import as_eval

    names = input_names or _forward_parameter_names(module)
    if not names:
        raise ModelLoadError(type(module).__name__, "cannot tell the names of forward's inputs")
    return TorchSource(module=as_eval(module), input_names=names, description=type(module).__name__)


def load_model_file(path: Path) -> ModelSource:
    """An ONNX file, a float TFLite file (``.tflite``, or any file with the TFLite identifier),
    a ``torch.export`` archive (``.pt2``), a TorchScript file, or a Keras ``.keras`` / ``.h5``
    file or SavedModel directory (these need the ``tensorflow`` extra).

    Raises:
        ModelLoadError: the file is missing or none of the loaders accepts it.
        MissingExtraError: a Keras or SavedModel source without TensorFlow installed.
    """
    from edgefleet.controller.compress.keras_source import is_keras_path, keras_source

    if is_keras_path(path):
        return keras_source(path)
    if not path.is_file():
        raise ModelLoadError(str(path), "file does not exist")
    if path.suffix.lower() == ".onnx":
        return onnx_source(path)
    if path.suffix.lower() == ".tflite" or is_tflite(path):
        return tflite_source(path)
    errors: list[str] = []
    if zipfile.is_zipfile(path):
        torch = import_torch(f"{path} (a zip file: a TorchScript or torch.export model?)")
        from edgefleet.controller.compress.distill import as_eval

        try:
            program = torch.export.load(str(path))
            module = program.module()
            names = tuple(
                spec.arg.name
                for spec in program.graph_signature.input_specs
                if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
                and hasattr(spec.arg, "name")
            )
            return TorchSource(
                module=module,
                input_names=names,
                description="torch.export program",
                kind="exported",
            )
        except Exception as e:  # noqa: BLE001 - torch raises many unrelated types here
            errors.append(f"torch.export: {type(e).__name__}")
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
            eager_view = torch_source(as_eval(scripted))
            return TorchSource(
                module=eager_view.module,
                input_names=eager_view.input_names,
                description="TorchScript module",
                kind="torchscript",
            )
        except Exception as e:  # noqa: BLE001 - torch raises many unrelated types here
            errors.append(f"TorchScript: {type(e).__name__}")
    try:
        return onnx_source(path)
    except ModelLoadError:
        errors.append("ONNX: not a model")
    raise ModelLoadError(
        str(path),
        "not an ONNX, TorchScript or torch.export model ("
        + "; ".join([*errors, "TFLite: no TFL3 identifier"])
        + ")",
    )


def torch_signature(source: TorchSource, data: Dataset) -> IOSignature:
    """Signature of a torch model from data it can run on: dynamic on each input's batch axis
    (a whole input keeps its shape) and on each output's, from one call (for a sequence, its
    first call).

    Raises:
        DataMismatchError: the data does not carry the model's inputs, or the model rejects it.
    """
    if sorted(source.input_names) != sorted(data.inputs):
        raise DataMismatchError(
            f"data has inputs {sorted(data.inputs)}, the model expects "
            f"{sorted(source.input_names)}",
            expected=source.input_names,
            got=list(data.inputs),
        )
    feed = data.first_call()
    outputs = run_torch(source.module, source.input_names, feed)
    layout = data.layout
    return IOSignature(
        inputs=tuple(
            _dynamic_spec(name, feed[name], layout.input(name).batch_axis)
            for name in source.input_names
        ),
        outputs=tuple(
            _dynamic_spec(name, arr, layout.output_axis(name)) for name, arr in outputs.items()
        ),
    )


def _dynamic_spec(name: str, arr: np.ndarray, axis: int | None) -> TensorSpec:
    shape: list[int | None] = [int(d) for d in arr.shape]
    if axis is not None and axis < len(shape):
        shape[axis] = None
    return TensorSpec(name=name, dtype=dtype_name(arr.dtype), shape=tuple(shape))


def run_torch(
    module: nn.Module, input_names: tuple[str, ...], inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Outputs of a torch module as named numpy arrays (``output_0``, ``output_1``, ...).

    Raises:
        DataMismatchError: the module raises on these inputs.
    """
    torch = import_torch("running a torch model")
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in input_names)
    try:
        with torch.no_grad():
            result = module(*args)
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as e:
        shapes = {n: list(inputs[n].shape) for n in input_names}
        raise DataMismatchError(
            f"the model rejects inputs of shapes {shapes}: {str(e).splitlines()[0]}",
            expected=input_names,
            got=list(inputs),
        ) from e
    flat = result if isinstance(result, tuple | list) else (result,)
    return {f"output_{i}": t.detach().cpu().numpy() for i, t in enumerate(flat)}


def _forward_parameter_names(module: nn.Module) -> tuple[str, ...]:
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript
        return tuple(arg.name for arg in schema.arguments[1:])
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)
