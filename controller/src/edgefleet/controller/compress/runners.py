"""Run a built artifact in its own runtime (onnxruntime or LiteRT) and time it at batch 1.

Runners speak two dialects: *native* tensors (what the artifact takes and gives, e.g. int8 for a
full-int8 TFLite, which is what golden pairs hold) and *float* tensors (the original model's
domain, used to compare with the original). Latency runs single-threaded for stable figures.
"""

from __future__ import annotations

import logging
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.controller.compress.compact import exact_int8_blockers
from edgefleet.controller.compress.sources import dtype_name
from edgefleet.controller.errors import ConversionError
from edgefleet.shared.manifest import IOSignature, TensorSpec

Arrays = dict[str, np.ndarray]
ORT_CHUNK = 256
CPU = ["CPUExecutionProvider"]
EXACT_INT8 = "session.x64quantprecision"  # onnxruntime's key for exact int8 kernels on x86
log = logging.getLogger(__name__)


def cpu_session_options(threads: int | None = None, *, exact: bool = True) -> ort.SessionOptions:
    """onnxruntime CPU options whose integer kernels compute what a device computes.

    On x86 without VNNI (AVX2, AVX-512F alone) onnxruntime runs u8s8 matrix products through
    VPMADDUBSW, whose int16 pair sums saturate: an int8 model there computes something other
    than an arm64 board or a VNNI CPU does, so its figures, its format choice and its golden
    pairs would depend on the controller host. Precision mode (``exact``) stores such weights
    as uint8 on x86 for the u8u8 kernels, exact on every CPU; on arm64 it changes nothing.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry(EXACT_INT8, "1" if exact else "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def open_cpu_session(
    source: str | bytes,
    *,
    threads: int | None = None,
    optimize: bool = True,
    quiet: bool = False,
) -> tuple[ort.InferenceSession, bool]:
    """A CPU session of the model at path (or in bytes) ``source`` with
    :func:`cpu_session_options`, and whether its integer kernels are the exact ones. A model
    onnxruntime's exact-int8 mode cannot load or run (an artifact built elsewhere whose nodes
    share a quantized weight, see :func:`exact_int8_blockers`; the artifacts built here never
    do) is opened without it, with a warning: its integer kernels then run as this CPU runs
    them.

    Raises:
        Exception: onnxruntime's own, when the model does not load without that mode either.
    """

    def options(exact: bool) -> ort.SessionOptions:
        chosen = cpu_session_options(threads, exact=exact)
        if quiet:
            chosen.log_severity_level = 3
        if not optimize:
            chosen.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return chosen

    blockers = _blockers(source)
    if blockers is None:
        try:
            return ort.InferenceSession(source, options(True), providers=CPU), True
        except Exception as e:  # noqa: BLE001 - retried without the mode; a real fault fails again
            blockers = str(e).splitlines()[0][:200]
    session = ort.InferenceSession(source, options(False), providers=CPU)
    log.warning(
        "onnxruntime's exact int8 mode cannot load this model (%s); opened without it, so on "
        "x86 without VNNI its int8 products may saturate",
        blockers,
    )
    return session, False


def _blockers(source: str | bytes) -> str | None:
    """:func:`exact_int8_blockers` of the model, or None when it cannot be parsed here (the
    session then says why)."""
    try:
        if isinstance(source, bytes):
            model = onnx.load_model_from_string(source)
        else:
            model = onnx.load(source, load_external_data=False)
    except Exception:  # noqa: BLE001 - onnxruntime reports what is wrong with the file
        return None
    return exact_int8_blockers(model)


class ArtifactRunner(Protocol):
    runtime: str
    signature: IOSignature

    def to_native(self, inputs: Arrays) -> Arrays: ...
    def run_native(self, inputs: Arrays) -> Arrays: ...
    def to_float(self, outputs: Arrays) -> Arrays: ...


def run_float(runner: ArtifactRunner, inputs: Arrays) -> Arrays:
    """Float outputs of ``runner`` for float inputs of any batch size."""
    return runner.to_float(run_batched(runner, runner.to_native(inputs)))


def run_batched(runner: ArtifactRunner, native: Arrays) -> Arrays:
    """Native outputs for native inputs of any batch size (chunked to what the artifact takes)."""
    n = next(iter(native.values())).shape[0]
    step = ORT_CHUNK if all(s.shape[:1] == (None,) for s in runner.signature.inputs) else 1
    parts: list[Arrays] = [
        runner.run_native({k: v[i : i + step] for k, v in native.items()})
        for i in range(0, n, step)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class OnnxRunner:
    """onnxruntime CPU session."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self._name = path.name
        try:
            self._session, exact = open_cpu_session(str(path), threads=threads)
        except Exception as e:
            raise ConversionError(path.name, f"onnxruntime cannot load it: {e}") from e
        self.runtime = f"onnxruntime {ort.__version__} CPU, {threads} thread(s)"
        if not exact:
            self.runtime += ", int8 kernels as this CPU runs them"
        self.signature = IOSignature(
            inputs=tuple(_ort_spec(a) for a in self._session.get_inputs()),
            outputs=tuple(_ort_spec(a) for a in self._session.get_outputs()),
        )
        self._dtypes = {s.name: s.dtype for s in self.signature.inputs}

    def to_native(self, inputs: Arrays) -> Arrays:
        return {k: inputs[k].astype(self._dtypes[k], copy=False) for k in self._dtypes}

    def run_native(self, inputs: Arrays) -> Arrays:
        names = [s.name for s in self.signature.outputs]
        try:
            outputs = self._session.run(names, inputs)
        except Exception as e:
            raise ConversionError(self._name, f"onnxruntime cannot run it: {e}") from e
        return dict(zip(names, outputs, strict=True))

    def to_float(self, outputs: Arrays) -> Arrays:
        return outputs


class LiteRtRunner:
    """LiteRT interpreter; quantizes int8 IO. Tensors are named as the agent's LiteRT runtime
    names them: by the model's serving signature when it has exactly one, else (a file from a
    model zoo often has none) by the interpreter's own input and output tensors, in its order."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._name = path.name
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        except Exception as e:
            raise ConversionError(path.name, f"LiteRT cannot load it: {e}") from e
        self.runtime = f"ai-edge-litert CPU (XNNPACK), {threads} thread(s)"
        self._runner: Any
        try:
            self._runner = self._interpreter.get_signature_runner()
        except ValueError:  # no serving signature, or several: the agent uses the tensors too
            self._runner = None
        try:
            self._read_details()
        except (ValueError, RuntimeError) as e:
            raise ConversionError(path.name, f"LiteRT cannot prepare it: {e}") from e
        self.signature = IOSignature(
            inputs=tuple(_tfl_spec(k, d) for k, d in self._in.items()),
            outputs=tuple(_tfl_spec(k, d) for k, d in self._out.items()),
        )

    def _read_details(self) -> None:
        """Input and output details by name (again after a resize: their shapes changed).

        Raises:
            ValueError, RuntimeError: LiteRT cannot allocate the model's tensors.
        """
        if self._runner is not None:
            self._in = self._runner.get_input_details()
            self._out = self._runner.get_output_details()
            return
        interpreter = self._interpreter
        interpreter.allocate_tensors()
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        names = [str(d["name"]) for d in (*inputs, *outputs)]
        if len(set(names)) != len(names):
            twice = sorted(n for n, k in Counter(names).items() if k > 1)
            raise ValueError(f"no serving signature and tensors named alike: {twice}")
        self._in = {str(d["name"]): d for d in inputs}
        self._out = {str(d["name"]): d for d in outputs}

    def to_native(self, inputs: Arrays) -> Arrays:
        native: Arrays = {}
        for name, detail in self._in.items():
            arr = inputs[name]
            dtype = np.dtype(detail["dtype"])
            scale, zero = detail["quantization"]
            if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
                info = np.iinfo(dtype)
                arr = np.clip(np.round(arr / scale) + zero, info.min, info.max)
            native[name] = arr.astype(dtype, copy=False)
        return native

    def run_native(self, inputs: Arrays) -> Arrays:
        try:
            if self._runner is not None:
                result: dict[str, Any] = self._runner(**inputs)
                return {k: np.asarray(v) for k, v in result.items()}
            return self._run_tensors(inputs)
        except Exception as e:
            raise ConversionError(self._name, f"LiteRT cannot run it: {e}") from e

    def _run_tensors(self, inputs: Arrays) -> Arrays:
        """One invocation through the input and output tensors, resized to these inputs."""
        interpreter = self._interpreter
        resized = False
        for name, detail in self._in.items():
            if tuple(detail["shape"]) != inputs[name].shape:
                interpreter.resize_tensor_input(detail["index"], list(inputs[name].shape))
                resized = True
        if resized:
            self._read_details()
        for name, detail in self._in.items():
            interpreter.set_tensor(detail["index"], inputs[name])
        interpreter.invoke()
        return {name: interpreter.get_tensor(d["index"]).copy() for name, d in self._out.items()}

    def to_float(self, outputs: Arrays) -> Arrays:
        floats: Arrays = {}
        for name, arr in outputs.items():
            scale, zero = self._out[name]["quantization"]
            if scale and np.issubdtype(arr.dtype, np.integer):
                floats[name] = (arr.astype(np.float32) - zero) * np.float32(scale)
            else:
                floats[name] = arr
        return floats


def open_runner(path: Path, runtime: str) -> ArtifactRunner:
    if runtime == "onnxruntime":
        return OnnxRunner(path)
    return LiteRtRunner(path)


def measuring_host() -> str:
    """Where a latency was measured: host name, CPU model and count, architecture. A label for
    the figure (the controller host is not a device), never a budget."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return f"{platform.node()} ({cpu}, {os.cpu_count() or 1} CPUs, {platform.machine()})"[:256]


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}  # fmt: skip


def _ort_spec(arg: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ConversionError(arg.name, f"tensor type {arg.type} is not supported")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def _tfl_spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(int(d) if d > 0 else None for d in signature)
    return TensorSpec(name=name, dtype=dtype_name(detail["dtype"]), shape=shape)
