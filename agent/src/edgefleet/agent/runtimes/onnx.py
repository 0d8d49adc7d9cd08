"""onnxruntime (CPU) behind the :class:`ModelRuntime` interface.

Every model is checked by :func:`check_self_contained` before onnxruntime opens it: external
data is refused by the agent itself, whichever onnxruntime version is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgefleet.agent.errors import InferenceError, ModelLoadError, UnsupportedArtifactError
from edgefleet.agent.onnx_external import check_self_contained
from edgefleet.agent.runtimes import Array


class OnnxRuntimeModel:
    """One ``InferenceSession`` on the CPU provider. ``session.run`` is thread-safe."""

    runtime_name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        """Load the model at ``path`` after checking it reads nothing from outside itself.

        Raises:
            ExternalDataError, MalformedOnnxError: the model names external data, or is not
                a well-formed ONNX file (both ModelLoadError: refused before onnxruntime
                opens it).
            UnsupportedArtifactError: onnxruntime is not installed.
            ModelLoadError: onnxruntime cannot load it.
            OSError: the file could not be read.
        """
        check_self_contained(path)  # whatever onnxruntime's own external-data rules
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UnsupportedArtifactError("onnx", "onnxruntime is not installed") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # failures surface as exceptions
        # The file is parsed as the ONNX protobuf just checked, never as an ORT flatbuffer.
        options.add_session_config_entry("session.load_model_format", "ONNX")
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {e}") from e
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self._output_list = list(self.output_names)
        self._only = self.output_names[0] if len(self.output_names) == 1 else None
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
        if self._only is not None:  # most models: a dict literal is ~4x cheaper than dict(zip)
            return {self._only: results[0]}
        return dict(zip(self.output_names, results))  # noqa: B905 - one result per name asked

    def close(self) -> None:
        # Dropping the last reference frees the session's arenas.
        self.__dict__.pop("_session", None)
        self.__dict__.pop("_run", None)
