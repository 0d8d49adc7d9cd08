"""Run under an emulated CPU (``qemu-x86_64 -cpu Haswell``: AVX2, no VNNI) by
``test_int8_on_any_cpu``: what the controller's and the agent's onnxruntime sessions compute
for int8 models there, next to a plain session's, and what the controller's int8 target
builds and reports there.

    python int8_probe.py run OUT.npz INPUTS.npz MODEL.onnx...    each model's first output
    python int8_probe.py build FP32.onnx WORK OUT.json    build_onnx_int8 (static) details
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

PROBE_SEED = 7
PROBE_SHAPE = (16, 16, 12, 12)


def probe_images(n: int = PROBE_SHAPE[0], seed: int = PROBE_SEED) -> np.ndarray:
    """Non-negative images in the top half of their range: quantized activations near 255."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.0, (n, *PROBE_SHAPE[1:])).astype(np.float32)


def _outputs(out: Path, inputs: Path, models: list[str]) -> None:
    from edgefleet.agent.runtimes.onnx import OnnxRuntimeModel
    from edgefleet.controller.compress.quantize import ort_session

    with np.load(inputs) as stored:
        feed = {name: stored[name] for name in stored.files}
    results: dict[str, np.ndarray] = {}
    for i, model in enumerate(models):
        results[f"{i}/controller"] = ort_session(Path(model)).run(None, feed)[0]
        agent = OnnxRuntimeModel(Path(model))
        results[f"{i}/agent"] = next(iter(agent.run(feed).values()))
        agent.close()
        plain = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        results[f"{i}/plain"] = plain.run(None, feed)[0]
    np.savez(out, **results)


def _build(fp32: Path, work: Path, out: Path) -> None:
    from edgefleet.controller.compress.targets import batched_feeds, build_onnx_int8

    feeds = batched_feeds({"image": probe_images(64, seed=1)}, batch=16)
    built = build_onnx_int8(
        fp32, work, "static", per_channel=True, opset=17, calibration=feeds, check=feeds
    )
    out.write_text(json.dumps({"path": str(built.path), "details": built.details}, default=str))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "run":
        _outputs(Path(args[0]), Path(args[1]), args[2:])
    elif command == "build":
        _build(Path(args[0]), Path(args[1]), Path(args[2]))
    else:
        raise SystemExit(f"unknown command {command!r}")
