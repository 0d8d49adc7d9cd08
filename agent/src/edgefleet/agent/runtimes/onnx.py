"""onnxruntime (CPU) behind the :class:`ModelRuntime` interface.

Every model is checked by :func:`check_self_contained` before onnxruntime opens it: external
data is refused by the agent itself, whichever onnxruntime version is installed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import InferenceError, ModelLoadError, UnsupportedArtifactError
from edgefleet.agent.onnx_external import check_self_contained
from edgefleet.agent.runtimes import Array

log = logging.getLogger(__name__)


def _session(ort: Any, path: Path, threads: int, *, exact: bool) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures surface as exceptions
    # The file is parsed as the ONNX protobuf just checked, never as an ORT flatbuffer.
    options.add_session_config_entry("session.load_model_format", "ONNX")
    # Exact integer kernels on x86 without VNNI, whose u8s8 products saturate: the device then
    # computes what the controller's golden pairs hold, as arm64 always does.
    options.add_session_config_entry("session.x64quantprecision", "1" if exact else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        self._ort, self._path, self._threads = ort, path, threads
        self._reopening = threading.Lock()
        self._tried = False  # a run-time switch out of the exact mode (see run)
        try:
            self._session = _session(ort, path, threads, exact=True)
            self._exact = True
        except Exception as exact_failure:  # noqa: BLE001 - retried without the mode below
            try:
                self._session = _session(ort, path, threads, exact=False)
            except Exception as e:
                raise ModelLoadError(f"onnxruntime cannot load {path.name}: {e}") from e
            self._without_exact_mode(exact_failure)
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
            results = self._without_exact_mode_once(inputs, e)
            if results is None:
                raise InferenceError(f"onnxruntime: {e}") from e
        if self._only is not None:  # most models: a dict literal is ~4x cheaper than dict(zip)
            return {self._only: results[0]}
        return dict(zip(self.output_names, results))  # noqa: B905 - one result per name asked

    def _without_exact_mode_once(self, inputs: Mapping[str, Array], failure: Exception) -> Any:
        """The outputs of ``inputs`` from the same model opened without the exact-int8 mode,
        which is kept from then on, when the exact session failed on them and that one does
        not (onnxruntime's rewrite of a per-axis int8 weight without a zero point fails at
        run time); None otherwise. Tried once per model, on its first failed run (the golden
        pairs' replay, before it serves): inputs that are simply wrong (a client's bad shape)
        cost one reload at most, and never the exact mode."""
        with self._reopening:
            if not self._exact or self._tried:
                return None
            self._tried = True
            try:
                session = _session(self._ort, self._path, self._threads, exact=False)
                results = session.run(self._output_list, inputs)
            except Exception:  # noqa: BLE001 - the exact session's failure is reported
                return None
            self._session, self._run = session, session.run
            self._without_exact_mode(failure)
            return results

    def _without_exact_mode(self, failure: Exception) -> None:
        self._exact = False
        log.warning(
            "%s: onnxruntime's exact int8 mode cannot run it (%s); opened without it, so on "
            "x86 without VNNI its int8 products may saturate",
            self._path.name,
            str(failure).splitlines()[0][:200],
        )

    def close(self) -> None:
        # Dropping the last reference frees the session's arenas.
        self.__dict__.pop("_session", None)
        self.__dict__.pop("_run", None)
