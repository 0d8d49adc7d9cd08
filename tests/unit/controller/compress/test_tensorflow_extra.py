"""The tensorflow extra's seams: converters' output (Python and native, both file descriptors)
goes to a log while they run, and a missing module is found without importing TensorFlow and
refused naming the extra to install."""

from __future__ import annotations

import importlib.abc
import os
import sys

import pytest

from edgefleet.controller.compress.tensorflow_extra import (
    captured_output,
    missing_modules,
    require_onnx2tf,
)
from edgefleet.controller.errors import MissingExtraError


def test_captured_output_takes_python_and_native_writes_to_both_descriptors(tmp_path, capfd):
    log = tmp_path / "convert.log"
    with captured_output(log):
        print("from python")
        print("to stderr", file=sys.stderr)
        os.write(1, b"native stdout\n")
        os.write(2, b"native stderr\n")
    print("after")
    out, err = capfd.readouterr()
    assert out == "after\n"
    assert err == ""
    assert log.read_text().split("\n")[:4] == [
        "from python", "to stderr", "native stdout", "native stderr",
    ]  # fmt: skip


def _failing_converter(log):
    with captured_output(log):
        os.write(1, b"lost\n")
        raise RuntimeError("converter failed")


def test_captured_output_restores_the_descriptors_when_the_call_fails(tmp_path, capfd):
    with pytest.raises(RuntimeError, match="converter failed"):
        _failing_converter(tmp_path / "failed.log")
    os.write(1, b"visible\n")
    assert capfd.readouterr().out == "visible\n"
    assert (tmp_path / "failed.log").read_text() == "lost\n"


class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "sng4onnx":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_a_blocked_module_is_missing_and_named_with_the_extra(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_Blocked(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "sng4onnx", raising=False)
    assert missing_modules(("json", "sng4onnx", "no_such_module_here")) == [
        "sng4onnx", "no_such_module_here",
    ]  # fmt: skip
    with pytest.raises(MissingExtraError) as raised:
        require_onnx2tf("converting an ONNX model to tflite-fp32")
    assert str(raised.value) == (
        "converting an ONNX model to tflite-fp32 needs onnx2tf, which is not installed "
        "(missing: sng4onnx): pip install 'edgefleet-controller[tensorflow]'"
    )
    assert raised.value.extra == "tensorflow"
