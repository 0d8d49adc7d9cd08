"""Op counts are read from edgetpu_compiler's summary; without the compiler the error says what
to install."""

from __future__ import annotations

import shutil

import pytest

from edgefleet.controller.compress.convert import parse_edgetpu_log, require_edgetpu_compiler
from edgefleet.controller.errors import ToolNotFoundError

SAMPLE = """Edge TPU Compiler version 16.0.384591198
Input: model-full-int8.tflite
Output: model-full-int8_edgetpu.tflite

Operator                       Count      Status

FULLY_CONNECTED                3          Mapped to Edge TPU
QUANTIZE                       1          Operation is otherwise supported, but not mapped

Number of operations that will run on Edge TPU: 3
Number of operations that will run on CPU: 1
"""


def test_parse_edgetpu_log() -> None:
    assert parse_edgetpu_log(SAMPLE) == {"ops_on_edgetpu": 3, "ops_on_cpu": 1}
    assert parse_edgetpu_log("garbage") == {}


@pytest.mark.skipif(shutil.which("edgetpu_compiler") is not None, reason="compiler installed")
def test_missing_compiler_names_what_to_install() -> None:
    with pytest.raises(ToolNotFoundError, match="edgetpu-compiler") as info:
        require_edgetpu_compiler()
    assert info.value.tool == "edgetpu_compiler"
