"""Runs onnx2tf in a child process (``python -P _onnx2tf_worker.py REQUEST.json``, importing
nothing of edgefleet): its prints, TensorFlow's native logging and any file it writes stay in the
work directory the parent gave it. The outcome goes to the request's ``result`` file as JSON:
``{"ok": true, "tflite": PATH}``, ``{"missing": MODULE, "error": TEXT}`` (exit 3) or
``{"node": NAME, "error": TEXT}`` (exit 2)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

MISSING_EXIT = 3
FAILED_EXIT = 2


def convert(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Convert ``request["onnx"]`` into ``request["output"]``; (exit code, result)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import onnx2tf  # type: ignore[import-untyped]
    except ImportError as e:
        return MISSING_EXIT, {"missing": e.name or "onnx2tf", "error": str(e)}
    output = Path(request["output"])
    try:
        onnx2tf.convert(
            input_onnx_file_path=request["onnx"],
            output_folder_path=str(output),
            # The model's own layout at its inputs: NCHW stays NCHW (outputs are checked and
            # transposed back by the parent; onnx2tf has no option for them).
            keep_ncw_or_nchw_or_ncdhw_input_names=request["keep_layout"],
            not_use_onnxsim=True,  # onnxsim is not a dependency; the graph is converted as given
            non_verbose=True,
            verbosity="error",
        )
    except SystemExit as e:  # onnx2tf exits on many of its errors, after printing them
        return FAILED_EXIT, {"node": None, "error": f"onnx2tf exited with status {e.code}"}
    except Exception as e:  # noqa: BLE001 - onnx2tf and TensorFlow raise many unrelated types
        node = getattr(e, "onnx_op_name", None)
        text = f"{type(e).__name__}: {e}".strip()
        traceback.print_exc()
        return FAILED_EXIT, {"node": node, "error": text.splitlines()[0] if text else repr(e)}
    found = sorted(output.glob("*_float32.tflite"))
    if not found:
        return FAILED_EXIT, {"node": None, "error": "onnx2tf wrote no float32 .tflite file"}
    return 0, {"ok": True, "tflite": str(found[0])}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    code, result = convert(request)
    Path(request["result"]).write_text(json.dumps(result), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
