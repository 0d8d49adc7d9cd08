"""Prebuilt models end to end: ``edgefleet model import`` (a child process, as an operator runs it)
registers a real pretrained model into a running controller's registry, a rollout sends it to a
real agent process over a real mosquitto, and the agent serves an inference whose answer is the
one the same file gives in its runtime here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from support.pretrained import pretrained_model

pytestmark = pytest.mark.slow


def _import(fleet, ref: str, artifact: str, eval_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_LATENCY_RUNS"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "model", "import", ref,
         "--artifact", artifact, "--eval", str(eval_path),
         "--data-dir", str(fleet.controller_dir), "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _infer(fleet, device_id: str, inputs: dict[str, np.ndarray]) -> httpx.Response:
    body = io.BytesIO()
    np.savez(body, **inputs)  # type: ignore[arg-type]
    return httpx.post(
        f"http://{fleet.http[device_id]}/v1/infer",
        content=body.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=30,
    )


def _rolled_out(fleet, model: str, device_id: str, runtime: str) -> dict:
    fleet.start_agent(device_id, runtimes=[runtime])
    fleet.wait_devices([device_id])
    rollout = fleet.rollout(
        "1", model=model, expect={"completed", "paused", "rolled_back"}, waves="100%",
        policy={"soak_s": 0},
    )  # fmt: skip
    assert rollout["status"] == "completed", (rollout["reason"], rollout["devices"])
    (device,) = rollout["devices"]
    assert device["state"] == "active"
    return device


def test_imported_onnx_classifier_is_rolled_out_and_serves(fleet, tmp_path):
    import onnxruntime as ort

    model = pretrained_model("ppocr-cls")
    images = np.random.default_rng(5).uniform(-1, 1, (9, 3, 48, 192)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=images[:8])
    record = _import(fleet, "ppocr-cls:1", f"onnx-fp32={model}", tmp_path / "eval.npz")
    assert [a["target"] for a in record["artifacts"]] == ["onnx-fp32"]

    device = _rolled_out(fleet, "ppocr-cls", "onnx-cls", "onnxruntime")
    assert device["target"] == "onnx-fp32"
    one = {"x": images[8:]}  # not one of the golden inputs
    response = _infer(fleet, "onnx-cls", one)
    assert response.status_code == 200, response.text
    assert (response.headers["X-Model-Id"], response.headers["X-Model-Version"]) == (
        "ppocr-cls",
        "1",
    )
    with np.load(io.BytesIO(response.content)) as served:
        (name,) = served.files
        got = served[name]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, one)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_imported_tflite_detector_is_rolled_out_to_a_litert_device_and_serves(fleet, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = pretrained_model("blazeface-short")
    faces = np.random.default_rng(6).uniform(-1, 1, (9, 128, 128, 3)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", input=faces[:8])
    _import(fleet, "blazeface:1", f"tflite-fp32={model}", tmp_path / "eval.npz")

    device = _rolled_out(fleet, "blazeface", "litert-face", "litert")
    assert device["target"] == "tflite-fp32"
    response = _infer(fleet, "litert-face", {"input": faces[8:]})
    assert response.status_code == 200, response.text
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], faces[8:])
    interpreter.invoke()
    with np.load(io.BytesIO(response.content)) as served:
        assert set(served.files) == {"regressors", "classificators"}
        for detail in interpreter.get_output_details():
            want = interpreter.get_tensor(detail["index"])
            np.testing.assert_allclose(served[detail["name"]], want, rtol=1e-4, atol=1e-4)
