"""The controller's LiteRT runner on files without one serving signature, named and ordered as
the agent's own LiteRT runtime names them: MediaPipe's BlazeFace as shipped in its registry wheel
(no signature, fixed batch 1, float16 weights), and small TFLite graphs built here with a
dynamic batch and with two signatures. Real LiteRT interpreters on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtimes.litert import LiteRtModel
from edgefleet.controller.compress.evaluate import time_call
from edgefleet.controller.compress.runners import (
    ORT_CHUNK,
    LiteRtRunner,
    run_float,
)
from support import agent_models
from support.pretrained import pretrained_model

pytestmark = pytest.mark.slow


def _interpreter_outputs(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """One invocation straight through LiteRT's tensors, as a user of the model would run it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return {
        str(d["name"]): interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()
    }


def _agent_names(path: Path, runner: LiteRtRunner) -> tuple[tuple[str, ...], tuple[str, ...]]:
    model = LiteRtModel(path, runner.signature)
    try:
        return model.input_names, model.output_names
    finally:
        model.close()


def test_blazeface_without_a_signature_runs_through_its_tensors_as_the_agent_names_them():
    path = pretrained_model("blazeface-short")
    runner = LiteRtRunner(path)
    assert [(s.name, s.dtype, s.shape) for s in runner.signature.inputs] == [
        ("input", "float32", (1, 128, 128, 3))
    ]
    # the interpreter's order (tensor 175 before 174), which is the agent's
    assert [s.name for s in runner.signature.outputs] == ["regressors", "classificators"]
    assert _agent_names(path, runner) == (("input",), ("regressors", "classificators"))

    faces = np.random.default_rng(3).uniform(-1, 1, (3, 128, 128, 3)).astype(np.float32)
    got = run_float(runner, {"input": faces})  # batch 1 model: three invocations
    assert {k: v.shape for k, v in got.items()} == {
        "regressors": (3, 896, 16),
        "classificators": (3, 896, 1),
    }
    for i in range(3):
        want = _interpreter_outputs(path, faces[i : i + 1])
        for name, value in want.items():
            np.testing.assert_array_equal(got[name][i : i + 1], value)
    latency = time_call(runner, runner.to_native({"input": faces[:1]}), runs=5)
    assert latency.p95_ms > 0


def test_a_dynamic_batch_without_a_signature_is_resized_per_chunk(tmp_path: Path):
    path = agent_models.tflite_add(tmp_path / "add.tflite").path
    runner = LiteRtRunner(path)
    inputs = [(s.name, s.shape) for s in runner.signature.inputs]
    assert inputs == [("a", (None, 4)), ("b", (None, 4))]
    rng = np.random.default_rng(4)
    n = ORT_CHUNK + 44  # one full chunk, then a smaller one: two resizes
    a, b = (rng.standard_normal((n, 4)).astype(np.float32) for _ in range(2))
    total = run_float(runner, {"a": a, "b": b})["total"]
    np.testing.assert_allclose(total, a + b, rtol=1e-6)
    one = runner.run_native({"a": a[:1], "b": b[:1]})["total"]
    np.testing.assert_allclose(one, a[:1] + b[:1], rtol=1e-6)


def test_two_signatures_and_no_default_fall_back_to_the_tensors_like_the_agent(tmp_path: Path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    plain = agent_models.tflite_add(tmp_path / "add.tflite").path
    model = s.ModelT.InitFromPackedBuf(plain.read_bytes(), 0)

    def signature(key: str, prefix: str) -> object:
        sig = s.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = key, 0
        sig.inputs, sig.outputs = [], []
        for index, name in ((0, "a"), (1, "b")):
            entry = s.TensorMapT()
            entry.name, entry.tensorIndex = f"{prefix}{name}", index
            sig.inputs.append(entry)
        out = s.TensorMapT()
        out.name, out.tensorIndex = f"{prefix}total", 2
        sig.outputs.append(out)
        return sig

    model.signatureDefs = [signature("one", "one_"), signature("two", "two_")]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "two-signatures.tflite"
    path.write_bytes(bytes(builder.Output()))

    runner = LiteRtRunner(path)
    assert [s.name for s in runner.signature.inputs] == ["a", "b"]
    assert [s.name for s in runner.signature.outputs] == ["total"]
    assert _agent_names(path, runner) == (("a", "b"), ("total",))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(run_float(runner, {"a": x, "b": x})["total"], 2 * x)
