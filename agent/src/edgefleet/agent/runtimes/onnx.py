"""onnxruntime (CPU) behind the :class:`ModelRuntime` interface."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgefleet.agent.errors import InferenceError, ModelLoadError, UnsupportedArtifactError
from edgefleet.agent.runtimes import Array


class OnnxRuntimeModel:
    """One ``InferenceSession`` on the CPU provider. ``session.run`` is thread-safe."""

    runtime_name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UnsupportedArtifactError("onnx", "onnxruntime is not installed") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # failures surface as exceptions
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {e}") from e
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self._output_list = list(self.output_names)
        self._run = self._session.run

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one inference.

        Raises:
            InferenceError: onnxruntime failed on these inputs.
        """
        try:
            results = self._run(self._output_list, inputs)
        except Exception as e:
            raise InferenceError(f"onnxruntime: {e}") from e
        return dict(zip(self.output_names, results, strict=True))

    def close(self) -> None:
        # Dropping the last reference frees the session's arenas.
        self.__dict__.pop("_session", None)
        self.__dict__.pop("_run", None)
