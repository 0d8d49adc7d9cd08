"""The Coral Edge TPU path: LiteRT with the ``libedgetpu.so.1`` delegate, or a clear refusal.

Kept apart because it is the only hardware-specific code in the agent. An Edge TPU artifact is
never run on the CPU: without the delegate it is refused.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import UnsupportedArtifactError
from edgefleet.agent.runtimes.litert import LiteRtModel, import_interpreter_module
from edgefleet.shared.manifest import Manifest

EDGETPU_LIBRARY = "libedgetpu.so.1"


def edgetpu_library_present(library: str = EDGETPU_LIBRARY) -> bool:
    """Whether the Edge TPU runtime library can be opened (cheap, for the hello message)."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def load_edgetpu_delegate(library: str = EDGETPU_LIBRARY) -> Any:
    """Load the Edge TPU delegate through LiteRT's ``load_delegate``.

    Raises:
        UnsupportedArtifactError: the library or the device is missing.
    """
    try:
        ctypes.CDLL(library)  # fails fast and cleanly where the runtime library is absent
    except OSError as e:
        raise UnsupportedArtifactError(
            "edgetpu",
            f"the Edge TPU delegate {library} did not load ({e}); refusing to run "
            "an Edge TPU model on the CPU",
        ) from e
    module = import_interpreter_module()
    try:
        return module.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as e:
        raise UnsupportedArtifactError(
            "edgetpu",
            f"the Edge TPU delegate {library} did not load ({e}); refusing to run "
            "an Edge TPU model on the CPU",
        ) from e


def load_edgetpu_model(path: Path, manifest: Manifest, *, threads: int = 1) -> LiteRtModel:
    """Load an ``edgetpu`` artifact with the delegate.

    Raises:
        UnsupportedArtifactError: no Edge TPU here, or the artifact does not target one.
        ModelLoadError: the interpreter rejected the file.
    """
    if manifest.target != "edgetpu":
        raise UnsupportedArtifactError(manifest.target, "not an Edge TPU artifact")
    delegate = load_edgetpu_delegate()
    return LiteRtModel(path, manifest.signature, threads=threads, delegates=[delegate])
