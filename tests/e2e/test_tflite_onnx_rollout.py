"""A model shipped as ``.tflite`` reaches an onnxruntime device: ``edgefleet model compress`` (a
child process, as an operator runs it) converts MediaPipe's BlazeFace (from the mediapipe wheel)
with tf2onnx and quantizes it to ``onnx-int8`` (static, calibrated) in a running controller's
registry; a rollout sends it over a real mosquitto to a real agent process that only has
onnxruntime, which replays its golden pairs, swaps, and serves one inference whose outputs, named
as the TFLite model's, are what the registered file gives in onnxruntime here."""

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

from support.onnx_session import cpu_session
from support.pretrained import pretrained_model

pytestmark = pytest.mark.slow


def _compress(fleet, model: Path, eval_path: Path, calib_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_LATENCY_RUNS"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "model", "compress", str(model),
         "--name", "blazeface", "--version", "1", "--target", "onnx-int8",
         "--eval", str(eval_path), "--calib", str(calib_path),
         "--data-dir", str(fleet.controller_dir), "--json"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tflite_detector_compressed_to_onnx_int8_is_rolled_out_and_serves(fleet, tmp_path):
    rng = np.random.default_rng(13)
    images = rng.uniform(-1, 1, (25, 128, 128, 3)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", input=images[:8])
    np.savez(tmp_path / "calib.npz", input=images[8:24])
    record = _compress(
        fleet, pretrained_model("blazeface-short"), tmp_path / "eval.npz", tmp_path / "calib.npz"
    )
    (artifact,) = record["artifacts"]
    assert artifact["target"] == "onnx-int8"
    assert artifact["report"]["details"]["int8_weight_share"] == 1.0
    assert [i["name"] for i in artifact["signature"]["inputs"]] == ["input"]
    assert artifact["golden"]["pairs"] > 0

    swapped = fleet.roll_out_to_new_agent("onnx-face", "blazeface")
    assert swapped["figures"]["golden_pairs"] == float(artifact["golden"]["pairs"])

    one = {"input": images[24:]}  # none of the golden inputs
    body = io.BytesIO()
    np.savez(body, **one)  # type: ignore[arg-type]
    response = httpx.post(
        f"http://{fleet.http['onnx-face']}/v1/infer",
        content=body.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert (response.headers["X-Model-Id"], response.headers["X-Model-Version"]) == (
        "blazeface",
        "1",
    )
    session = cpu_session(artifact["path"])
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == ["classificators", "regressors"]
    wanted = dict(zip(names, session.run(None, one), strict=True))
    with np.load(io.BytesIO(response.content)) as served:
        assert set(served.files) == set(names)
        for name, want in wanted.items():
            assert served[name].shape == want.shape
            np.testing.assert_allclose(served[name], want, rtol=1e-5, atol=1e-5)
