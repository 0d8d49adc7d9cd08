"""The controller's optional ``tensorflow`` extra (TensorFlow, tf2onnx, onnx2tf): finding it,
importing TensorFlow quietly, and the error that names the extra when it is missing.

TensorFlow and its converters print to the process's own stdout and stderr (C++ logging, progress
lines, "Saved artifact at ..."): :func:`captured_output` sends both file descriptors to a log
file for the length of a call, so ``--json`` output stays parseable and the log is shown only
when the call fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from edgefleet.controller.errors import MissingExtraError

EXTRA = "tensorflow"
# Modules onnx2tf imports at run time (it declares no dependencies of its own).
ONNX2TF_MODULES = ("tensorflow", "tf_keras", "onnx2tf", "onnx_graphsurgeon", "sng4onnx", "psutil")
TF2ONNX_MODULES = ("tensorflow", "tf2onnx")
LOG_TAIL_CHARS = 2000


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The ``modules`` that cannot be found, without importing any (TensorFlow takes seconds)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocked or half-installed package
            found = False
        if not found:
            missing.append(name)
    return missing


def import_tensorflow(needed_for: str) -> ModuleType:
    """TensorFlow, imported with its start-up logging silenced.

    Raises:
        MissingExtraError: TensorFlow is not installed (or cannot be imported), naming the extra.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        with captured_output(None):
            import tensorflow as tf  # type: ignore[import-untyped]
    except ImportError as e:
        raise MissingExtraError(needed_for, "TensorFlow", EXTRA, str(e)) from e
    return tf  # type: ignore[no-any-return]


def import_tf2onnx(needed_for: str) -> ModuleType:
    """tf2onnx (which imports TensorFlow).

    Raises:
        MissingExtraError: it is not installed, naming the extra.
    """
    import_tensorflow(needed_for)
    try:
        with captured_output(None):
            import tf2onnx  # type: ignore[import-untyped]
    except ImportError as e:
        raise MissingExtraError(needed_for, "tf2onnx", EXTRA, str(e)) from e
    return tf2onnx  # type: ignore[no-any-return]


def require_onnx2tf(needed_for: str) -> None:
    """Check, without importing it, that onnx2tf and what it imports are installed.

    Raises:
        MissingExtraError: naming the missing modules and the extra.
    """
    missing = missing_modules(ONNX2TF_MODULES)
    if missing:
        raise MissingExtraError(needed_for, "onnx2tf", EXTRA, f"missing: {', '.join(missing)}")


def require_tf2onnx(needed_for: str) -> None:
    """Check, without importing them, that tf2onnx and TensorFlow are installed.

    Raises:
        MissingExtraError: naming the missing modules and the extra.
    """
    missing = missing_modules(TF2ONNX_MODULES)
    if missing:
        raise MissingExtraError(needed_for, "tf2onnx", EXTRA, f"missing: {', '.join(missing)}")


def log_tail(text: str) -> str:
    """The end of a converter's log, for an error message."""
    text = text.strip()
    return text if len(text) <= LOG_TAIL_CHARS else "..." + text[-LOG_TAIL_CHARS:]


@contextlib.contextmanager
def captured_output(log: Path | None) -> Iterator[None]:
    """Everything written to file descriptors 1 and 2 (Python and native code alike) goes to
    ``log`` (appended; discarded when None) until the block ends."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    target = os.open(
        log if log is not None else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()  # type: ignore[union-attr]
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
