"""Int8 graphs onnxruntime's exact-int8 mode cannot load on x86 (it rewrites int8 weights to
uint8 under names derived from theirs, and gives a per-axis DequantizeLinear without a zero
point a scalar one): :func:`exact_int8_loadable` rewrites them to load, computing the same
numbers, and the controller's and the agent's sessions load a foreign one without the mode,
saying so."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.agent.errors import InferenceError
from edgefleet.agent.runtimes.onnx import OnnxRuntimeModel
from edgefleet.controller.compress.compact import (
    compact_file,
    exact_int8_blockers,
    exact_int8_loadable,
)
from edgefleet.controller.compress.runners import OnnxRunner
from support.onnx_session import cpu_session
from support.shared_int8 import BUILDERS, INPUT

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="onnxruntime's exact-int8 rewrite runs on x86 only"
)
CASES = pytest.mark.parametrize("build", list(BUILDERS.values()), ids=list(BUILDERS))


def _plain(path: Path) -> np.ndarray:
    """As written, no onnxruntime rewrite: what the graph computes."""
    return cpu_session(path, optimize=False).run(None, {"x": INPUT})[0]


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Optimized, onnxruntime may quantize a float activation at run time (weight-only int8
    MatMul): one activation step, well under 1% of the peak here; a saturated sum is not."""
    np.testing.assert_allclose(got, want, rtol=0, atol=0.01 * np.abs(want).max())


@CASES
def test_the_exact_mode_refuses_the_graph_as_it_stands(
    build: Callable[[Path], Path], tmp_path: Path
) -> None:
    with pytest.raises(Exception, match=r"existing tensor|per axis quantization"):
        cpu_session(build(tmp_path / "m.onnx")).run(None, {"x": INPUT})


@CASES
def test_rewritten_it_loads_in_exact_mode_and_computes_the_same(
    build: Callable[[Path], Path], tmp_path: Path
) -> None:
    path = build(tmp_path / "m.onnx")
    want = _plain(path)
    model = onnx.load(str(path))
    exact_int8_loadable(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    np.testing.assert_array_equal(_plain(tmp_path / "rewritten.onnx"), want)
    _close(cpu_session(tmp_path / "rewritten.onnx").run(None, {"x": INPUT})[0], want)


@CASES
def test_compaction_leaves_it_loadable(build: Callable[[Path], Path], tmp_path: Path) -> None:
    path = build(tmp_path / "m.onnx")
    want = _plain(path)
    compact_file(path)
    _close(cpu_session(path).run(None, {"x": INPUT})[0], want)


@CASES
def test_a_foreign_one_loads_without_the_mode_and_says_so(
    build: Callable[[Path], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = build(tmp_path / "m.onnx")
    want = _plain(path)
    with caplog.at_level(logging.WARNING):
        runner = OnnxRunner(path)
        agent = OnnxRuntimeModel(path)
    assert runner.runtime.endswith("int8 kernels as this CPU runs them")
    _close(runner.run_native({"x": INPUT})["y"], want)
    _close(agent.run({"x": INPUT})["y"], want)
    agent.close()
    warned = [r.getMessage() for r in caplog.records if "exact int8 mode" in r.getMessage()]
    assert len(warned) == 2, warned
    assert all("may saturate" in message for message in warned)


@CASES
def test_the_controller_names_what_blocks_the_mode(
    build: Callable[[Path], Path], tmp_path: Path
) -> None:
    model = onnx.load(str(build(tmp_path / "m.onnx")))
    before = model.SerializeToString()
    found = exact_int8_blockers(model)
    assert found is not None
    assert found.split(" ", 1)[1].startswith(next(k for k, b in BUILDERS.items() if b is build))
    assert model.SerializeToString() == before  # the model itself is left alone
    exact_int8_loadable(model)
    assert exact_int8_blockers(model) is None


def test_a_bad_request_never_takes_the_agent_out_of_the_exact_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = BUILDERS["per-axis without zero point"](tmp_path / "m.onnx")
    model = onnx.load(str(path))
    exact_int8_loadable(model)
    onnx.save(model, str(path))
    agent = OnnxRuntimeModel(path)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # a client's wrong shape, again and again
            with pytest.raises(InferenceError):
                agent.run({"x": np.zeros((2, 5), np.float32)})
        _close(agent.run({"x": INPUT})["y"], _plain(path))
    agent.close()
    assert not [r for r in caplog.records if "exact int8 mode" in r.getMessage()]
