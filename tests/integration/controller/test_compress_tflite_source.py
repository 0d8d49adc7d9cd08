"""``edgefleet model compress`` with a ``.tflite`` source, through Typer's CliRunner, on
MediaPipe's BlazeFace short-range face detector as shipped in the mediapipe wheel (float16
weights behind DEQUANTIZE operators, no serving signature, input [1, 128, 128, 3]).

``tflite-fp32`` is the file itself; ``tflite-int8`` (dynamic-range) and ``tflite-full-int8``
(integer IO, calibrated) come from ai-edge-quantizer; the ONNX targets from its tf2onnx conversion
(the tensorflow extra), named and laid out as the TFLite model (NHWC). Each is evaluated against
the source as any compressed artifact is, and the agent's runtime passes the golden pairs
registered with it. Real LiteRT interpreters and onnxruntime sessions, a real SQLite registry;
refusals exit 1 and register nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.validation import validate
from edgefleet.controller.compress.runners import LiteRtRunner
from edgefleet.controller.compress.tflite_file import read_tflite
from edgefleet.controller.compress.tflite_quantize import quantize_tflite
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry.service import ModelRegistry
from support.agent_harness import manifest_for
from support.agent_models import BuiltModel
from support.model_cli import invoke_model as _invoke
from support.model_cli import registry_state as _state
from support.pretrained import pretrained_model

pytestmark = pytest.mark.slow
SIDE = 128


def faces(count: int, seed: int) -> np.ndarray:
    """Rendered face-like images in BlazeFace's input range [-1, 1]: a skin-toned ellipse with
    two dark eyes and a mouth, at random places and sizes on a random flat background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    images = np.empty((count, SIDE, SIDE, 3), np.float32)
    for i in range(count):
        image = np.broadcast_to(rng.uniform(0.0, 1.0, 3), (SIDE, SIDE, 3)).copy()
        cy, cx = rng.uniform(44, 84, 2)
        ry, rx = rng.uniform(26, 40), rng.uniform(20, 32)
        skin = np.array([0.87, 0.68, 0.55]) * rng.uniform(0.6, 1.1)
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = skin
        for ex in (cx - rx * 0.4, cx + rx * 0.4):
            image[((yy - cy + ry * 0.2) / 3.5) ** 2 + ((xx - ex) / 5.0) ** 2 <= 1.0] = 0.1
        mouth = ((yy - cy - ry * 0.45) / 3.0) ** 2 + ((xx - cx) / (rx * 0.45)) ** 2 <= 1.0
        image[mouth] = (0.55, 0.2, 0.2)
        noise = rng.normal(0.0, 0.02, image.shape)
        images[i] = np.clip(image + noise, 0.0, 1.0) * 2.0 - 1.0
    return images


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite-source")
    paths = {
        "data": root / "data",
        "face": pretrained_model("blazeface-short"),
        "eval": root / "eval.npz",
        "calib": root / "calib.npz",
        "full_int8": root / "blazeface-full-int8.tflite",
    }
    np.savez(paths["eval"], input=faces(16, seed=5))
    calibration = faces(16, seed=6)
    np.savez(paths["calib"], input=calibration)
    # An integer-IO model, built as a user would elsewhere with the same LiteRT tooling.
    quantize_tflite(
        paths["face"], paths["full_int8"], "tflite-full-int8", "static",
        calibration=({"input": calibration[i : i + 1]} for i in range(8)), min_share=0.5,
    )  # fmt: skip
    return paths


def _agent_validates(files: dict[str, Path], name: str, target: str) -> float:
    """The agent's LiteRT runtime on the artifact as registered passes its golden pairs; the
    largest error it saw."""
    registry = ModelRegistry.from_settings(get_settings(data_dir=files["data"]))
    stored = next(a for a in registry.artifacts_for(name, "1") if a.target == target)
    manifest = manifest_for(BuiltModel(stored.path, stored.signature, target, None), stored.golden)
    runtime = load_runtime(stored.path, manifest)
    try:
        checked = validate(runtime, manifest, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()
    assert checked.pairs == len(stored.golden.pairs) == get_settings().golden_pairs
    assert checked.max_abs_error <= stored.golden.atol
    return checked.max_abs_error


def test_a_model_zoo_tflite_compresses_to_every_litert_target_with_a_report(files):
    result = _invoke(
        files, "compress", str(files["face"]), "--name", "blazeface", "--version", "1",
        "-t", "tflite-fp32", "-t", "tflite-int8", "-t", "tflite-full-int8",
        "--eval", str(files["eval"]), "--calib", str(files["calib"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    artifacts = {a["target"]: a for a in record["artifacts"]}
    assert set(artifacts) == {"tflite-fp32", "tflite-int8", "tflite-full-int8"}
    assert record["source_sha256"] == artifacts["tflite-fp32"]["sha256"]
    assert record["summary"]["source_format"] == "TFLite"
    fp32 = artifacts["tflite-fp32"]
    int8, full = artifacts["tflite-int8"]["report"], artifacts["tflite-full-int8"]["report"]
    # The source as given: same bytes, outputs equal to themselves, named by its tensors.
    assert Path(fp32["path"]).read_bytes() == files["face"].read_bytes()
    assert fp32["report"]["quality"]["max_abs_error"] == 0.0
    assert fp32["report"]["runtime"] == "litert"
    assert {o["name"] for o in fp32["signature"]["outputs"]} == {"regressors", "classificators"}
    # Heavy operators (the source's float16 convolutions) really hold int8 weights now.
    assert int8["details"]["heavy_ops"]["CONV_2D"] > 10
    assert int8["details"]["int8_weight_share"] >= 0.9
    assert read_tflite(Path(artifacts["tflite-int8"]["path"])).constants["int8"] > 90_000
    assert full["details"]["int8_weight_share"] >= 0.9
    assert full["details"]["calibration_samples"] == 16
    inputs = artifacts["tflite-full-int8"]["signature"]["inputs"]
    assert [(i["name"], i["dtype"]) for i in inputs] == [("input", "int8")]
    outputs = artifacts["tflite-int8"]["signature"]["outputs"]
    assert [o["name"] for o in outputs] == [o["name"] for o in fp32["signature"]["outputs"]]
    for report in (int8, full):
        assert report["quality"]["samples"] == 16
        assert report["compare"] == "allclose"  # two outputs, not a classifier
        assert 0.0 < report["quality"]["max_rel_error"] < 0.5
        assert set(report["details"]["output_errors"]) == {"regressors", "classificators"}
        assert "CPUs" in report["latency"]["host"]  # labelled with the controller host
    # Smaller than the float16 source (float16 halves float32 already: int8 gains < 2x).
    assert int8["size_ratio"] > 1.3
    assert full["size_ratio"] > 1.1
    seen = {t: _agent_validates(files, "blazeface", t) for t in artifacts}
    for target, report in (("tflite-int8", int8), ("tflite-full-int8", full)):
        q, lat = report["quality"], report["latency"]
        print(
            f"\nblazeface {target}: {report['size_bytes']:,} B ({report['size_ratio']:.2f}x "
            f"smaller than {report['original_size_bytes']:,} B), max abs err "
            f"{q['max_abs_error']:.3f}, max rel err {q['max_rel_error']:.4f}, per output "
            f"{report['details']['output_errors']}; int8 weight share "
            f"{report['details']['int8_weight_share']:.3f}; p95 {lat['p95_ms']:.2f} ms vs fp32 "
            f"{fp32['report']['latency']['p95_ms']:.2f} ms on {lat['host']}; agent golden "
            f"max err {seen[target]:.4f}"
        )
    shown = _invoke(files, "show", "blazeface:1")
    assert shown.exit_code == 0, shown.output
    for target in artifacts:
        assert target in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        (
            "full_int8",
            ["-t", "tflite-int8"],
            "a full-integer model (quantized integer tensors at its boundary: ['classificators', "
            "'input', 'regressors']), not a float one to compress; register it as it is with "
            "`edgefleet model import NAME:VERSION --artifact tflite-full-int8=PATH`",
        ),
        ("face", ["-t", "tflite-int8", "--prune", "0.5"], "TFLite input supports quantization"),
        ("face", ["-t", "tflite-full-int8"], "tflite-full-int8 needs calibration data"),
    ],
)
def test_refusals_exit_1_with_one_line_and_register_nothing(files, source, args, message):
    before = _state(files)
    result = _invoke(
        files, "compress", str(files[source]), "--name", "refused", "--version", "1", *args,
        "--eval", str(files["eval"]),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert message in said[said.index("error: ") :], result.stderr
    assert "Traceback" not in result.output
    assert _state(files) == before


def test_without_ai_edge_quantizer_an_int8_target_names_the_package(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)  # import fails as if absent
    before = _state(files)
    result = _invoke(
        files, "compress", str(files["face"]), "--name", "noquant", "--version", "1",
        "-t", "tflite-fp32", "-t", "tflite-int8", "--eval", str(files["eval"]),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert "building tflite-int8 needs ai-edge-quantizer, which is not installed" in said
    assert "pip install 'ai-edge-quantizer==0.10.0' (it is in the controller's tflite" in said
    assert _state(files) == before


def test_a_model_zoo_tflite_compresses_to_onnx_targets_with_its_own_signature(files):
    """tf2onnx converts the file (its float16 weights widened); onnx-int8 is static QDQ or
    QOperator from that graph, calibrated on --calib; every artifact takes and gives what the
    TFLite model does, by the same names, NHWC."""
    result = _invoke(
        files, "compress", str(files["face"]), "--name", "blazeface-onnx", "--version", "1",
        "-t", "onnx-fp32", "-t", "onnx-int8", "-t", "onnx-fp16", "-t", "tflite-int8",
        "--eval", str(files["eval"]), "--calib", str(files["calib"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    artifacts = {a["target"]: a for a in json.loads(result.stdout)["artifacts"]}
    assert set(artifacts) == {"onnx-fp32", "onnx-int8", "onnx-fp16", "tflite-int8"}
    source = LiteRtRunner(files["face"]).signature
    want = {
        "inputs": [(s.name, s.dtype, list(s.shape)) for s in source.inputs],
        "outputs": [(s.name, s.dtype, list(s.shape)) for s in source.outputs],
    }
    assert want["inputs"] == [("input", "float32", [1, SIDE, SIDE, 3])]  # NHWC, as given
    assert {o[0] for o in want["outputs"]} == {"regressors", "classificators"}
    for target, artifact in artifacts.items():
        got = {
            side: [(s["name"], s["dtype"], s["shape"]) for s in artifact["signature"][side]]
            for side in ("inputs", "outputs")
        }
        assert got == want, target
    fp32 = artifacts["onnx-fp32"]["report"]
    assert fp32["runtime"] == "onnxruntime"
    assert fp32["details"]["built_from"].startswith("the TFLite model, converted by tf2onnx")
    check = fp32["details"]["conversion_check"]
    assert check["samples"] == 16
    assert check["max_rel_error"] < 1e-4  # the same computation, in float32
    assert fp32["quality"]["max_rel_error"] < 1e-4
    assert fp32["size_ratio"] < 0.6  # float32 weights against the source's float16
    int8 = artifacts["onnx-int8"]["report"]
    details = int8["details"]
    assert details["quantization"] == "static"  # auto, with calibration data, for a CNN
    assert details["heavy_ops"] == {"Conv": 37}
    assert details["int8_heavy_ops"] == {"Conv": 37}
    assert details["int8_weight_share"] == 1.0
    assert int8["size_ratio"] > 1.7  # the float16 source: int8 weights gain at most 2x on it
    assert int8["size_bytes"] * 3.2 < fp32["size_bytes"]
    assert 0.0 < int8["quality"]["max_rel_error"] < 0.5
    assert set(details["output_errors"]) == {"regressors", "classificators"}
    fp16 = artifacts["onnx-fp16"]["report"]
    assert fp16["quality"]["max_rel_error"] < 0.01
    seen = {t: _agent_validates(files, "blazeface-onnx", t) for t in artifacts}
    q, lat = int8["quality"], int8["latency"]
    print(
        f"\nblazeface onnx-int8: {int8['size_bytes']:,} B ({int8['size_ratio']:.2f}x smaller than "
        f"the {int8['original_size_bytes']:,} B float16 source, "
        f"{fp32['size_bytes'] / int8['size_bytes']:.2f}x than onnx-fp32), "
        f"{details['quant_format']}, max abs err {q['max_abs_error']:.3f}, max rel err "
        f"{q['max_rel_error']:.4f}, per output "
        f"{details['output_errors']}; p95 {lat['p95_ms']:.2f} ms vs onnx-fp32 "
        f"{fp32['latency']['p95_ms']:.2f} ms on {lat['host']}; agent golden max err "
        f"{seen['onnx-int8']:.4f}"
    )


def test_without_the_tensorflow_extra_onnx_targets_name_it(files, monkeypatch):
    """Refused before any work, naming the extra (the import system finds no tf2onnx)."""
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    before = _state(files)
    result = _invoke(
        files, "compress", str(files["face"]), "--name", "notf", "--version", "1",
        "-t", "tflite-int8", "-t", "onnx-int8", "--eval", str(files["eval"]),
        "--calib", str(files["calib"]),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert (
        "converting a TFLite model to onnx-int8 needs tf2onnx, which is not installed (missing: "
        "tf2onnx): pip install 'edgefleet-controller[tensorflow]'"
    ) in said, result.stderr
    assert "Traceback" not in result.output
    assert _state(files) == before
