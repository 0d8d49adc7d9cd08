"""``edgefleet model import`` through Typer's CliRunner on real pretrained models from registry
wheels: the PaddleOCR text-direction classifier (ONNX opset 11, dynamic H/W) with an int8 build of
it made here as a user would make one elsewhere (onnxruntime's static QDQ quantizer), and
MediaPipe's BlazeFace face detector as shipped (a ``.tflite`` without a serving signature), and
an ``edgetpu`` stand-in for an edgetpu_compiler output (``support.edgetpu_standin``) given
without its CPU twin.
Real onnxruntime and LiteRT sessions, a real SQLite registry; refusals exit 1 with one line and
leave the registry and its store as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.validation import validate
from edgefleet.controller.cli import app
from edgefleet.controller.compress.prebuilt import NO_TWIN
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry.service import ModelRegistry
from support import agent_models
from support.agent_harness import manifest_for
from support.agent_models import BuiltModel
from support.edgetpu_standin import edgetpu_compiler_standin
from support.model_cli import invoke_model as _invoke
from support.model_cli import registry_state as _state
from support.pretrained import pretrained_model

pytestmark = pytest.mark.slow
runner = CliRunner()
CLS_SHAPE = (3, 48, 192)


def ppocr_int8(source: Path, dst: Path, calibration: np.ndarray) -> Path:
    """Static int8 (QDQ, per tensor: the model is opset 11) with onnxruntime's quantizer, after
    moving the weights Paddle's exporter keeps in Constant nodes into initializers, where the
    quantizer looks for them."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model = onnx.load(str(source))
    kept = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            weight = onnx.TensorProto()
            weight.CopyFrom(node.attribute[0].t)
            weight.name = node.output[0]
            model.graph.initializer.append(weight)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    staged = dst.with_name("ppocr-cls-initializers.onnx")
    onnx.save(model, str(staged))

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter({"x": calibration[i : i + 1]} for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    quantize_static(str(staged), str(dst), Samples(), quant_format=QuantFormat.QDQ)
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("import-cli")
    rng = np.random.default_rng(13)
    images = rng.uniform(-1.0, 1.0, (24, *CLS_SHAPE)).astype(np.float32)
    cls = pretrained_model("ppocr-cls")
    paths = {
        "data": root / "data",
        "cls": cls,
        "cls_int8": ppocr_int8(cls, root / "ppocr-cls-int8.onnx", images[8:]),
        "cls_eval": root / "cls-eval.npz",
        "face": pretrained_model("blazeface-short"),
        "face_eval": root / "face-eval.npz",
    }
    np.savez(paths["cls_eval"], x=images[:8])
    faces = rng.uniform(-1.0, 1.0, (8, 128, 128, 3)).astype(np.float32)
    np.savez(paths["face_eval"], input=faces)
    return paths


def test_import_a_pretrained_onnx_classifier_and_its_int8_build(files):
    result = _invoke(
        files, "import", "ppocr-cls:1",
        "--artifact", f"onnx-fp32={files['cls']}",
        "--artifact", f"onnx-int8={files['cls_int8']}",
        "--eval", str(files["cls_eval"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    artifacts = {a["target"]: a for a in record["artifacts"]}
    assert set(artifacts) == {"onnx-fp32", "onnx-int8"}
    fp32, int8 = artifacts["onnx-fp32"]["report"], artifacts["onnx-int8"]["report"]
    assert record["source_sha256"] == artifacts["onnx-fp32"]["sha256"]
    assert record["recipe"] == {
        "import": {"reference": "onnx-fp32", "cpu_twin": None, "task": "auto"}
    }
    assert fp32["details"]["format"] == "ONNX opset 11"
    assert fp32["quality"]["max_abs_error"] == 0.0
    assert int8["details"]["weights"]["int8"] > 100_000  # the convolutions' weights
    assert int8["size_ratio"] > 1.5
    assert int8["quality"]["top1_agreement"] >= 0.75
    assert int8["quality"]["samples"] == 8
    assert int8["compare"] == "top1"
    assert "CPUs" in int8["latency"]["host"]  # labelled with the controller host
    assert artifacts["onnx-int8"]["golden"]["pairs"] == 8
    assert artifacts["onnx-fp32"]["signature"]["inputs"][0]["shape"] == [None, 3, None, None]
    print(
        f"\nppocr-cls import: int8 {int8['size_bytes']:,} B ({int8['size_ratio']:.2f}x smaller), "
        f"top-1 agreement {int8['quality']['top1_agreement']:.3f}, max abs err "
        f"{int8['quality']['max_abs_error']:.4f}; p95 fp32 {fp32['latency']['p95_ms']:.2f} ms, "
        f"int8 {int8['latency']['p95_ms']:.2f} ms on {int8['latency']['host']}"
    )
    shown = _invoke(files, "show", "ppocr-cls:1")
    assert shown.exit_code == 0, shown.output
    assert "onnx-int8" in shown.stdout


def test_import_a_tflite_from_a_model_zoo_that_the_agent_then_validates(files):
    result = _invoke(
        files, "import", "blazeface:1", "-a", f"tflite-fp32={files['face']}",
        "--eval", str(files["face_eval"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads(result.stdout)["artifacts"]
    report = artifact["report"]
    assert report["runtime"] == "litert"
    assert report["details"]["weights"]["float16"] > 100_000  # as shipped: float16 weights
    assert {o["name"] for o in artifact["signature"]["outputs"]} == {"regressors", "classificators"}
    assert artifact["golden"]["compare"] == "allclose"
    assert Path(artifact["path"]).read_bytes() == files["face"].read_bytes()
    # The agent's LiteRT runtime, on the file as registered, passes its golden pairs.
    registry = ModelRegistry.from_settings(get_settings(data_dir=files["data"]))
    (stored,) = registry.artifacts_for("blazeface", "1")
    manifest = manifest_for(BuiltModel(stored.path, stored.signature, "tflite-fp32", None),
                            stored.golden)  # fmt: skip
    runtime = load_runtime(stored.path, manifest)
    try:
        checked = validate(runtime, manifest, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()
    assert checked.pairs == 8
    assert checked.max_abs_error <= stored.golden.atol


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-a", "onnx-fp32={cls}", "-a", "tflite-fp32={face}", "--eval", "{cls_eval}"],
            "tflite-fp32 does not match onnx-fp32: inputs ['input'], not ['x']",
        ),
        (
            ["-a", "onnx-int8={cls}", "--eval", "{cls_eval}"],
            "onnx-int8=ch_ppocr_mobile_v2.0_cls_infer.onnx: onnx-int8 holds int8 weights, but "
            "only 0% of its",
        ),
        (["-a", "tflite-fp32={cls}", "--eval", "{cls_eval}"], "not a TFLite flatbuffer"),
        (["-a", "onnx-fp32={face}", "--eval", "{face_eval}"], "a TFLite flatbuffer, not ONNX"),
        (["-a", "edgetpu={face}", "--eval", "{face_eval}"], "no edgetpu-custom-op operator"),
        (["-a", "onnx-fp32", "--eval", "{cls_eval}"], "--artifact takes TARGET=PATH"),
        (["-a", "onnx-fp32={cls}", "--eval", "{face_eval}"], "evaluation data has inputs"),
    ],
)
def test_refusals_exit_1_with_one_line_and_register_nothing(files, args, message):
    before = _state(files)
    filled = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    result = _invoke(files, "import", "refused:1", *filled)
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())  # after the progress lines, one error line
    assert message in said[said.index("error: ") :], result.stderr
    assert "Traceback" not in result.output
    assert _state(files) == before


def test_name_needs_a_version_and_a_registered_version_is_not_replaced(files):
    result = _invoke(files, "import", "ppocr-cls", "-a", f"onnx-fp32={files['cls']}",
                     "--eval", str(files["cls_eval"]))  # fmt: skip
    assert result.exit_code == 1
    assert "NAME:VERSION" in result.stderr
    first = _invoke(files, "import", "twice:1", "-a", f"onnx-fp32={files['cls']}",
                    "--eval", str(files["cls_eval"]))  # fmt: skip
    assert first.exit_code == 0, first.output
    before = _state(files)
    again = _invoke(files, "import", "twice:1", "-a", f"onnx-int8={files['cls_int8']}",
                    "--eval", str(files["cls_eval"]))  # fmt: skip
    assert again.exit_code == 1
    assert "already registered" in " ".join(again.stderr.split())
    assert _state(files) == before


def test_an_edgetpu_file_without_its_cpu_twin_is_registered_and_shown_with_the_reason(
    files, tmp_path
):
    twin = agent_models.tflite_int8_classifier(tmp_path / "model_full_int8.tflite").path
    tpu = edgetpu_compiler_standin(twin, tmp_path / "model_full_int8_edgetpu.tflite")
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32))
    result = _invoke(files, "import", "coral:1", "-a", f"edgetpu={tpu}", "--eval", str(data),
                     "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads(result.stdout)["artifacts"]
    assert artifact["golden"] is None
    report = artifact["report"]
    assert (report["quality"], report["latency"], report["unmeasured"]) == (None, None, NO_TWIN)
    assert report["runtime"] == "edgetpu"

    shown = runner.invoke(app, ["model", "show", "coral:1", "--data-dir", str(files["data"])],
                          env={"COLUMNS": None, "TERM": "dumb"})  # fmt: skip
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout  # no TTY: 80 columns
    rows = [line.split() for line in lines if line.split()[:1] == ["edgetpu"]]
    assert len(rows) == 3  # artifacts, quality, latency
    assert rows[1][1:] == ["-"] * 5  # no accuracy, delta, agreement or errors
    assert rows[2][1:] == ["-"] * 3  # no latency or budget
    said = " ".join(shown.stdout.split())
    assert f"edgetpu: not measured: {NO_TWIN}" in said
    as_json = json.loads(_invoke(files, "show", "coral:1", "--json").stdout)
    assert as_json["artifacts"][0]["golden"] is None
    listed = _invoke(files, "list")
    assert listed.exit_code == 0, listed.output
    assert "coral" in listed.stdout
    models, _ = _state(files)
    assert {"name": "coral", "versions": ["1"]} in [
        {k: m[k] for k in ("name", "versions")} for m in models
    ]
