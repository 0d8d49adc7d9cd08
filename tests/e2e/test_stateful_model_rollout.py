"""A stateful model end to end: ``edgefleet model compress`` (a child process, as an operator runs
it) turns the real Silero VAD and a sequence data file (audio windows, a state fed back from
``stateN``, an int64 scalar sample rate) into an onnx-int8 artifact in a running controller's
registry; a rollout sends it to a real agent process over a real mosquitto, the agent replays
its golden pairs (each one call, state included) before it swaps, then serves two consecutive
calls over its local HTTP API (``.npz``, then JSON with the state it was given back)."""

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

SR, HOP, CONTEXT, STEPS = 16000, 512, 64, 4
LAYOUT = {
    "inputs": {"state": {"whole": True, "batch_axis": 1}, "sr": {"whole": True}},
    "sequence": {"steps": STEPS, "feedback": {"state": "stateN"}},
}


def _clip(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Noise, plus a voiced sound in 4 Hz syllables (harmonics of f0) or tone bursts."""
    t = np.arange(n) / SR
    x = rng.normal(0.0, 0.005, n)
    syllables = np.sin(2 * np.pi * rng.uniform(3, 5) * t) > 0
    if kind == "voiced":
        f0 = rng.uniform(100, 200)
        harmonics = [k for k in range(1, 40) if f0 * k < 4000]
        voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in harmonics)
        x += 0.3 * voiced / np.abs(voiced).max() * syllables
    elif kind == "tone":
        x += 0.2 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t) * syllables
    return x.astype(np.float32)


def _windows(rng: np.random.Generator, sequences: int) -> np.ndarray:
    kinds = ("voiced", "noise", "tone")
    audio = np.stack([_clip(rng, kinds[i % 3], CONTEXT + STEPS * HOP) for i in range(sequences)])
    return np.stack([audio[:, s * HOP : s * HOP + CONTEXT + HOP] for s in range(STEPS)], axis=1)


def _compress(fleet, model: Path, eval_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_LATENCY_RUNS"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "model", "compress", str(model),
         "--name", "vad", "--version", "1", "--target", "onnx-int8", "--int8-mode", "dynamic",
         "--eval", str(eval_path), "--data-dir", str(fleet.controller_dir), "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compressed_silero_vad_validates_its_state_and_serves_consecutive_calls(fleet, tmp_path):
    rng = np.random.default_rng(11)
    np.savez(
        tmp_path / "eval.npz",
        input=_windows(rng, 6),
        state=np.zeros((2, 1, 128), np.float32),
        sr=np.array(SR, np.int64),
        layout=json.dumps(LAYOUT),
    )
    record = _compress(fleet, pretrained_model("silero-vad"), tmp_path / "eval.npz")
    (artifact,) = record["artifacts"]
    assert artifact["golden"]["pairs"] == 8  # two sequences of four calls
    assert artifact["report"]["details"]["sequence"]["steps"] == STEPS

    swapped = fleet.roll_out_to_new_agent("vad-pi", "vad")
    assert swapped["figures"]["golden_pairs"] == 8.0  # replayed on the device, state included
    assert swapped["figures"]["max_abs_error"] <= artifact["golden"]["atol"]

    session = cpu_session(artifact["path"])
    audio = _windows(np.random.default_rng(12), 1)[0]  # [STEPS, 576], none of the golden calls
    sr = np.array(SR, np.int64)
    first = {"input": audio[:1], "state": np.zeros((2, 1, 128), np.float32), "sr": sr}
    body = io.BytesIO()
    np.savez(body, **first)  # type: ignore[arg-type]
    url = f"http://{fleet.http['vad-pi']}/v1/infer"
    response = httpx.post(
        url, content=body.getvalue(), headers={"Content-Type": "application/x-npz"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Id"] == "vad"
    with np.load(io.BytesIO(response.content)) as served:
        assert sorted(served.files) == ["output", "stateN"]
        probability, state = served["output"], served["stateN"]
    want_probability, want_state = session.run(None, first)
    assert (probability.shape, state.shape) == ((1, 1), (2, 1, 128))
    np.testing.assert_allclose(probability, want_probability, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state, want_state, rtol=1e-5, atol=1e-6)

    # The next call, as a client streaming audio makes it: JSON, the state it was given back.
    second = {"input": audio[1:2], "state": state, "sr": sr}
    response = httpx.post(
        url,
        json={"inputs": {"input": audio[1:2].tolist(), "state": state.tolist(), "sr": SR}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    want_probability, want_state = session.run(None, second)
    np.testing.assert_allclose(outputs["output"], want_probability, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["stateN"], want_state, rtol=1e-5, atol=1e-5)

    refused = httpx.post(  # a batched sample rate is named, not a runtime failure
        url,
        json={"inputs": {"input": audio[2:3].tolist(), "state": state.tolist(), "sr": [SR]}},
        timeout=30,
    )
    assert refused.status_code == 400
    assert "input 'sr' has shape [1], expected []" in refused.json()["error"]
