"""A real pretrained model compressed to static int8 end to end: ``edgefleet model compress`` (a
child process, as an operator runs it) quantizes PaddleOCR's text-direction classifier with
calibration data into a running controller's registry, a rollout sends the onnx-int8 artifact to
a real agent process over a real mosquitto, and the agent serves an inference whose answer is
the one the registered file gives in onnxruntime here."""

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
         "--name", "ppocr-cls", "--version", "1", "--target", "onnx-int8",
         "--int8-mode", "static", "--eval", str(eval_path), "--calib", str(calib_path),
         "--data-dir", str(fleet.controller_dir), "--json"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random RGB text-line crops normalised as PaddleOCR feeds them (roughly [-1, 1])."""
    return (rng.random((n, 3, 48, 192), dtype=np.float32) - 0.5) * 2


def test_pretrained_classifier_compressed_to_static_int8_is_rolled_out_and_serves(fleet, tmp_path):
    rng = np.random.default_rng(21)
    np.savez(tmp_path / "eval.npz", x=_images(rng, 16))
    np.savez(tmp_path / "calib.npz", x=_images(rng, 16))
    one = {"x": _images(rng, 1)}  # neither a golden nor a calibration input
    record = _compress(
        fleet, pretrained_model("ppocr-cls"), tmp_path / "eval.npz", tmp_path / "calib.npz"
    )
    (artifact,) = record["artifacts"]
    assert artifact["target"] == "onnx-int8"
    details = artifact["report"]["details"]
    assert details["quantization"] == "static"
    assert details["int8_weight_share"] == 1.0
    assert artifact["golden"]["pairs"] > 0

    swapped = fleet.roll_out_to_new_agent("onnx-ocr", "ppocr-cls")
    assert swapped["figures"]["golden_pairs"] == float(artifact["golden"]["pairs"])

    body = io.BytesIO()
    np.savez(body, **one)  # type: ignore[arg-type]
    response = httpx.post(
        f"http://{fleet.http['onnx-ocr']}/v1/infer",
        content=body.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert (response.headers["X-Model-Id"], response.headers["X-Model-Version"]) == (
        "ppocr-cls",
        "1",
    )
    session = cpu_session(artifact["path"])
    (want,) = session.run(None, one)
    with np.load(io.BytesIO(response.content)) as served:
        (name,) = served.files
        got = served[name]
    assert got.shape == want.shape == (1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
