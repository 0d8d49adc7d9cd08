"""onnxruntime sessions for tests, with the options the controller and the agent use: integer
kernels exact on every CPU (see :func:`edgefleet.controller.compress.runners.cpu_session_options`),
so a test's figures for an int8 model are the same on an x86 host without VNNI as on a Pi."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from edgefleet.controller.compress.runners import cpu_session_options


def cpu_session(
    model: str | Path | bytes | onnx.ModelProto,
    *,
    optimize: bool = True,
    threads: int | None = None,
    optimized_path: Path | None = None,
) -> ort.InferenceSession:
    """A CPU session of ``model`` (a path, serialized bytes or a proto); ``optimize=False`` runs
    the graph as written; ``optimized_path`` saves what onnxruntime rewrote it to."""
    options = cpu_session_options(threads)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
