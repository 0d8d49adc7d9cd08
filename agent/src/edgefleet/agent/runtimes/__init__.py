"""Model runtimes behind one small interface, loaded lazily by artifact runtime.

``onnxruntime`` and LiteRT are imported only when an artifact that needs them is loaded, so an
agent serving an ONNX model never pays for LiteRT's memory and vice versa.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.agent.errors import UnsupportedArtifactError
from edgefleet.shared.manifest import Manifest

Array = npt.NDArray[np.generic]


class ModelRuntime(Protocol):
    """A loaded model: named arrays in, named arrays out.

    ``run`` may be called from several threads at once; implementations that are not
    thread-safe serialise calls themselves.
    """

    runtime_name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one inference.

        Raises:
            InferenceError: the runtime failed.
        """
        ...

    def close(self) -> None:
        """Release the runtime's memory. Called once, after the last request finished."""
        ...


LITERT_FAMILY = frozenset({"litert", "tflite_runtime"})


def check_runtime_allowed(manifest: Manifest, allowed: Collection[str] | None) -> None:
    """Refuse an artifact whose runtime this agent was configured not to use.

    Raises:
        UnsupportedArtifactError: the runtime is outside ``allowed``.
    """
    if allowed is None:
        return
    needed = {"onnxruntime"} if manifest.runtime == "onnxruntime" else LITERT_FAMILY
    if not needed & set(allowed):
        raise UnsupportedArtifactError(
            manifest.target, f"this agent is configured for runtimes {sorted(allowed)} only"
        )


def load_runtime(path: Path, manifest: Manifest, *, threads: int = 1) -> ModelRuntime:
    """Load the artifact at ``path`` in the runtime its manifest names.

    Raises:
        UnsupportedArtifactError: no runtime for this artifact on this device (e.g. no Edge TPU).
        ModelLoadError: the runtime rejected the file, or its inputs and outputs do not match
            the manifest's signature.
    """
    runtime: ModelRuntime
    if manifest.runtime == "onnxruntime":
        from edgefleet.agent.runtimes.onnx import OnnxRuntimeModel

        runtime = OnnxRuntimeModel(path, threads=threads)
    elif manifest.runtime == "litert":
        from edgefleet.agent.runtimes.litert import LiteRtModel

        runtime = LiteRtModel(path, manifest.signature, threads=threads)
    else:
        from edgefleet.agent.runtimes.edgetpu import load_edgetpu_model

        runtime = load_edgetpu_model(path, manifest, threads=threads)
    _check_signature(runtime, manifest)
    return runtime


def _check_signature(runtime: ModelRuntime, manifest: Manifest) -> None:
    from edgefleet.agent.errors import ModelLoadError

    expected_in = {spec.name for spec in manifest.signature.inputs}
    expected_out = {spec.name for spec in manifest.signature.outputs}
    if set(runtime.input_names) != expected_in or not expected_out <= set(runtime.output_names):
        runtime.close()
        raise ModelLoadError(
            f"model inputs {sorted(runtime.input_names)} / outputs {sorted(runtime.output_names)} "
            f"do not match the signed signature {sorted(expected_in)} / {sorted(expected_out)}"
        )


def available_runtimes() -> dict[str, str]:
    """Runtimes installed here and their versions, found without importing them."""
    from importlib import metadata

    found: dict[str, str] = {}
    for name, dist in (
        ("onnxruntime", "onnxruntime"),
        ("litert", "ai-edge-litert"),
        ("tflite_runtime", "tflite-runtime"),
    ):
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
