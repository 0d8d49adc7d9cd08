"""``edgefleet model compress`` of an ONNX model to LiteRT targets (the controller's
``tensorflow`` extra), through Typer's CliRunner: onnx2tf converts a small NCHW conv net the test
trains and exports from torch; tflite-int8 and tflite-full-int8 are quantized from that file by
ai-edge-quantizer. Every TFLite artifact keeps the ONNX model's signature (names, NCHW shapes,
dtypes; int8 at the full-integer file's boundary) and agrees with it on the evaluation data; an
NCHW feature-map output, which onnx2tf turns into NHWC, is transposed back; an operator onnx2tf
cannot convert fails naming the node. onnx2tf's own output never reaches the CLI's, and no file
is left outside the work directory."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.validation import validate
from edgefleet.controller.compress.sources import onnx_signature
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry.service import ModelRegistry
from support.agent_harness import manifest_for
from support.agent_models import BuiltModel
from support.model_cli import invoke_model as _invoke
from support.model_cli import registry_state as _state
from support.models_compress import TinyCnn, trained_cnn

pytestmark = pytest.mark.slow
LITERT = ("tflite-fp32", "tflite-int8", "tflite-full-int8")


class WithFeatureMap(nn.Module):
    """TinyCnn's logits and its last NCHW feature map [N, 32, 4, 4], as a second output."""

    def __init__(self, cnn: TinyCnn) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.cnn.features(image)
        return self.cnn.head(torch.flatten(features, 1)), features


def _export(module: nn.Module, sample: np.ndarray, path: Path, outputs: list[str]) -> Path:
    axes = {name: {0: "batch"} for name in ("image", *outputs)}
    torch.onnx.export(
        module.eval(), (torch.from_numpy(sample),), str(path), input_names=["image"],
        output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _lp_pool_onnx(path: Path) -> Path:
    """Conv -> LpPool -> GlobalAveragePool: onnxruntime runs it, onnx2tf has no LpPool."""
    weights = np.random.default_rng(0).normal(size=(8, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node(
                "LpPool", ["c"], ["p"], name="lp_pool", kernel_shape=[2, 2], strides=[2, 2], p=2
            ),
            helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["logits"], name="flatten"),
        ],
        "lp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-to-tflite")
    model, train, held_out = trained_cnn(seed=0)
    sample = held_out.inputs["image"][:2]
    paths = {
        "data": root / "data",
        "cnn": _export(model, sample, root / "cnn.onnx", ["logits"]),
        "fmap": _export(WithFeatureMap(model), sample, root / "fmap.onnx", ["logits", "fmap"]),
        "lp": _lp_pool_onnx(root / "lp.onnx"),
        "eval": root / "eval.npz",
        "calib": root / "calib.npz",
    }
    held_out.save(paths["eval"])
    train.take(slice(0, 64)).save(paths["calib"])
    return paths


def _signature(path: Path, quantized: bool = False) -> dict[str, Any]:
    signature = onnx_signature(onnx.load(str(path))).model_dump(mode="json")
    if quantized:  # a full-integer file takes and gives int8 in place of float32
        for side in ("inputs", "outputs"):
            signature[side] = [{**spec, "dtype": "int8"} for spec in signature[side]]
    return signature


def _agent_validates(files: dict[str, Path], name: str, target: str) -> float:
    registry = ModelRegistry.from_settings(get_settings(data_dir=files["data"]))
    stored = next(a for a in registry.artifacts_for(name, "1") if a.target == target)
    manifest = manifest_for(BuiltModel(stored.path, stored.signature, target, None), stored.golden)
    runtime = load_runtime(stored.path, manifest)
    try:
        checked = validate(runtime, manifest, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()
    assert checked.pairs == len(stored.golden.pairs)
    return checked.max_abs_error


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fresh working directory and temporary directory for the run: both must stay empty."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return {"cwd": cwd, "tmp": tmp}


def test_an_onnx_model_compresses_to_litert_targets_with_its_own_signature(files, outside):
    result = _invoke(
        files, "compress", str(files["cnn"]), "--name", "cnn", "--version", "1",
        *(a for t in LITERT for a in ("-t", t)),
        "--eval", str(files["eval"]), "--calib", str(files["calib"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # onnx2tf's prints kept out of the output
    assert "onnx2tf" not in result.stderr  # nor its log, on success
    artifacts = {a["target"]: a for a in record["artifacts"]}
    assert list(artifacts) == list(LITERT)
    for target, artifact in artifacts.items():
        want = _signature(files["cnn"], quantized=target == "tflite-full-int8")
        assert artifact["signature"] == want, target
        assert artifact["signature"]["inputs"][0]["shape"] == [None, 1, 16, 16]  # still NCHW
    fp32 = artifacts["tflite-fp32"]["report"]
    assert fp32["details"]["built_from"].startswith("the ONNX model, converted by onnx2tf")
    assert fp32["details"]["kept_layout"] == ["image"]
    assert fp32["details"]["conversion_check"]["max_rel_error"] < 1e-4
    assert fp32["quality"]["top1_agreement"] == 1.0
    assert fp32["quality"]["max_rel_error"] < 1e-4
    for target in ("tflite-int8", "tflite-full-int8"):
        report = artifacts[target]["report"]
        assert report["quality"]["top1_agreement"] >= 0.97, (target, report["quality"])
        assert abs(report["quality"]["accuracy_delta_pt"]) <= 1.0 + 1e-9
        assert report["details"]["int8_weight_share"] >= 0.9
        assert artifacts["tflite-fp32"]["size"] / artifacts[target]["size"] > 2.0
    seen = {t: _agent_validates(files, "cnn", t) for t in LITERT}
    print(f"\ncnn (ONNX {record['source_size']:,} B, NCHW) through onnx2tf:")
    for target, artifact in artifacts.items():
        report, quality = artifact["report"], artifact["report"]["quality"]
        print(
            f"  {target:17} {artifact['size']:>7,} B  {report['size_ratio']:5.2f}x  top-1 "
            f"agreement {quality['top1_agreement']:.3f}  max abs err "
            f"{quality['max_abs_error']:.3g}  accuracy {quality['accuracy']:.2%} "
            f"({quality['accuracy_delta_pt']:+.2f} pt)  agent golden max err {seen[target]:.3g}"
        )
    assert sorted(p.name for p in outside["cwd"].iterdir()) == []
    assert sorted(p.name for p in outside["tmp"].iterdir()) == []


def test_an_nchw_feature_map_output_comes_back_in_nchw(files, outside):
    result = _invoke(
        files, "compress", str(files["fmap"]), "--name", "fmap", "--version", "1",
        "-t", "tflite-fp32", "-t", "tflite-int8", "--eval", str(files["eval"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    artifacts = {a["target"]: a for a in json.loads(result.stdout)["artifacts"]}
    for target, artifact in artifacts.items():
        assert artifact["signature"] == _signature(files["fmap"]), target
        assert artifact["signature"]["outputs"][1]["shape"] == [None, 32, 4, 4]
    fp32 = artifacts["tflite-fp32"]["report"]
    assert fp32["details"]["outputs_transposed_back_to_onnx_layout"] == ["fmap"]
    for output, error in fp32["details"]["output_errors"].items():
        assert error["max_rel_error"] < 1e-4, output
    int8_errors = artifacts["tflite-int8"]["report"]["details"]["output_errors"]
    assert int8_errors["fmap"]["max_rel_error"] < 0.1
    _agent_validates(files, "fmap", "tflite-fp32")
    assert sorted(p.name for p in outside["tmp"].iterdir()) == []


def test_an_operator_onnx2tf_cannot_convert_fails_naming_the_node(files, outside):
    before = _state(files)
    result = _invoke(
        files, "compress", str(files["lp"]), "--name", "lp", "--version", "1",
        "-t", "onnx-fp32", "-t", "tflite-fp32", "--eval", str(files["eval"]),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert (
        "building tflite-fp32 failed: onnx2tf cannot convert node 'lp_pool' (LpPool): it has no "
        "conversion for LpPool operators" in said
    ), result.stderr
    assert "Traceback" not in result.output
    assert "not yet implemented" not in result.output  # onnx2tf's own log stays in its file
    assert _state(files) == before
    assert sorted(p.name for p in outside["cwd"].iterdir()) == []
    assert sorted(p.name for p in outside["tmp"].iterdir()) == []
