"""LiteRT (TFLite) behind the :class:`ModelRuntime` interface, with int8 (de)quantization.

``ai_edge_litert.interpreter`` is preferred; ``tflite_runtime.interpreter`` is the fallback.
An interpreter is not thread-safe, so calls are serialised by a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np

from edgefleet.agent.errors import InferenceError, ModelLoadError, UnsupportedArtifactError
from edgefleet.agent.runtimes import Array
from edgefleet.shared.manifest import IOSignature

_QUANTIZED = (np.int8, np.uint8, np.int16)


def import_interpreter_module() -> ModuleType:
    """The LiteRT interpreter module: ``ai_edge_litert`` first, ``tflite_runtime`` second.

    Raises:
        UnsupportedArtifactError: neither is installed.
    """
    try:
        from ai_edge_litert import interpreter

        return cast(ModuleType, interpreter)
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite_interpreter  # type: ignore[import-not-found,unused-ignore]

        return tflite_interpreter  # type: ignore[no-any-return,unused-ignore]
    except ImportError as e:
        raise UnsupportedArtifactError(
            "tflite", "neither ai_edge_litert nor tflite_runtime is installed"
        ) from e


def _signature_names(interpreter: Any) -> tuple[dict[int, str], dict[int, str]]:
    """Map tensor indices to the names of the model's serving signature, when it has one.

    Converters name tensors ``serving_default_x:0`` but sign the model with its signature names
    (``x``); the manifest's IO signature uses the latter.
    """
    try:
        runner = interpreter.get_signature_runner()
    except (ValueError, RuntimeError, KeyError):
        return {}, {}
    inputs = {int(d["index"]): str(n) for n, d in runner.get_input_details().items()}
    outputs = {int(d["index"]): str(n) for n, d in runner.get_output_details().items()}
    return inputs, outputs


class LiteRtModel:
    """One interpreter; float inputs are quantized and int outputs dequantized when the
    signed signature says float but the model's tensor is quantized."""

    runtime_name = "litert"

    def __init__(
        self,
        path: Path,
        signature: IOSignature,
        *,
        threads: int = 1,
        delegates: Sequence[Any] = (),
    ) -> None:
        module = import_interpreter_module()
        try:
            self._interpreter = module.Interpreter(
                model_path=str(path),
                num_threads=threads,
                experimental_delegates=list(delegates) or None,
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"LiteRT cannot load {path.name}: {e}") from e
        self._lock = threading.Lock()
        self._in_names, self._out_names = _signature_names(self._interpreter)
        self._read_details()
        self.input_names = tuple(self._inputs)
        self.output_names = tuple(self._outputs)
        self._wanted = {s.name: np.dtype(s.dtype) for s in (*signature.inputs, *signature.outputs)}

    def _read_details(self) -> None:
        """Tensor details keyed by the model's signature names (or tensor names without one)."""
        interpreter = self._interpreter
        self._inputs = {
            self._in_names.get(d["index"], d["name"]): d for d in interpreter.get_input_details()
        }
        self._outputs = {
            self._out_names.get(d["index"], d["name"]): d for d in interpreter.get_output_details()
        }

    def _quantize(self, name: str, value: Array) -> Array:
        detail = self._inputs[name]
        tensor_dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail["quantization"]
        if value.dtype == tensor_dtype:
            return value
        if tensor_dtype.type in _QUANTIZED and scale and value.dtype.kind == "f":
            info = np.iinfo(tensor_dtype)
            q = np.round(value.astype(np.float32) / scale + zero_point)
            quantized: Array = np.clip(q, info.min, info.max).astype(tensor_dtype)
            return quantized
        converted: Array = value.astype(tensor_dtype)
        return converted

    def _dequantize(self, name: str, value: Array) -> Array:
        detail = self._outputs[name]
        scale, zero_point = detail["quantization"]
        wanted = self._wanted.get(name, value.dtype)
        if value.dtype.type in _QUANTIZED and scale and wanted.kind == "f":
            result: Array = ((value.astype(np.float32) - zero_point) * scale).astype(wanted)
            return result
        return value

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one inference, resizing dynamic inputs when the shape changed.

        Raises:
            InferenceError: the interpreter failed on these inputs.
        """
        interpreter = self._interpreter
        with self._lock:
            try:
                resized = False
                for name, value in inputs.items():
                    detail = self._inputs[name]
                    if tuple(detail["shape"]) != value.shape:
                        interpreter.resize_tensor_input(detail["index"], list(value.shape))
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                    self._read_details()
                for name, value in inputs.items():
                    interpreter.set_tensor(self._inputs[name]["index"], self._quantize(name, value))
                interpreter.invoke()
                return {
                    name: self._dequantize(name, interpreter.get_tensor(detail["index"]).copy())
                    for name, detail in self._outputs.items()
                }
            except (ValueError, RuntimeError, KeyError) as e:
                raise InferenceError(f"LiteRT: {e}") from e

    def close(self) -> None:
        self.__dict__.pop("_interpreter", None)
