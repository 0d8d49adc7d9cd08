"""``edgefleet model compress`` with a Keras source (the controller's ``tensorflow`` extra),
through Typer's CliRunner: a small NHWC CNN the test builds and trains on synthetic strokes,
saved as ``.keras``, compressed to every target (onnx-fp32 from tf2onnx, onnx-int8 and onnx-fp16
from it; tflite-fp32, tflite-int8 and tflite-full-int8 from TFLiteConverter), each artifact
evaluated in its own runtime (onnxruntime, LiteRT) and validated by the agent's runtime with its
golden pairs. The same model as ``.h5`` and as a SavedModel directory converts to the same
signature. Bad Keras inputs exit 1 and register nothing."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.validation import validate
from edgefleet.controller.compress import CompressionData, Dataset, Recipe, compress
from edgefleet.controller.compress.keras_source import keras_source, source_identity
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry.service import ModelRegistry
from support.agent_harness import manifest_for
from support.agent_models import BuiltModel
from support.keras_models import (
    export_saved_model,
    keras_module,
    tensorflow_module,
    trained_stroke_cnn,
)
from support.model_cli import invoke_model as _invoke
from support.model_cli import registry_state as _state

pytestmark = pytest.mark.slow
TARGETS = ("onnx-fp32", "onnx-int8", "onnx-fp16", "tflite-fp32", "tflite-int8", "tflite-full-int8")
INT8_TARGETS = ("onnx-int8", "tflite-int8", "tflite-full-int8")
SIGNATURE = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 16, 16, 1]}],
    "outputs": [{"name": "output_0", "dtype": "float32", "shape": [None, 4]}],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("keras-source")
    trained = trained_stroke_cnn(seed=0)
    paths: dict[str, Any] = {
        "data": root / "data",
        "keras": root / "strokes.keras",
        "h5": root / "strokes.h5",
        "saved_model": root / "strokes-savedmodel",
        "eval": root / "eval.npz",
        "calib": root / "calib.npz",
        "trained": trained,
    }
    trained.model.save(paths["keras"])
    trained.model.save(paths["h5"])
    export_saved_model(trained.model, paths["saved_model"])
    trained.evaluation.save(paths["eval"])
    trained.calibration.save(paths["calib"])
    return paths


def _expected_signature(target: str) -> dict[str, Any]:
    if target != "tflite-full-int8":
        return SIGNATURE
    return {
        side: [{**spec, "dtype": "int8"} for spec in specs] for side, specs in SIGNATURE.items()
    }


def _agent_validates(files: dict[str, Any], name: str, target: str) -> float:
    """The agent's runtime loads the artifact as registered and passes its golden pairs."""
    registry = ModelRegistry.from_settings(get_settings(data_dir=files["data"]))
    stored = next(a for a in registry.artifacts_for(name, "1") if a.target == target)
    manifest = manifest_for(BuiltModel(stored.path, stored.signature, target, None), stored.golden)
    runtime = load_runtime(stored.path, manifest)
    try:
        checked = validate(runtime, manifest, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()
    assert checked.pairs == len(stored.golden.pairs) == get_settings().golden_pairs
    return checked.max_abs_error


def test_a_keras_model_compresses_to_every_target_int8_within_a_point(files):
    result = _invoke(
        files, "compress", str(files["keras"]), "--name", "strokes", "--version", "1",
        *(a for t in TARGETS for a in ("-t", t)),
        "--eval", str(files["eval"]), "--calib", str(files["calib"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # TensorFlow's and the converters' output kept off stdout
    artifacts = {a["target"]: a for a in record["artifacts"]}
    assert list(artifacts) == list(TARGETS)
    summary = record["summary"]
    assert summary["source_format"] == "Keras (.keras)"
    assert record["source_sha256"] == source_identity(files["keras"])[0]
    weights = summary["original_params"] * 4
    trained = files["trained"]
    assert trained.accuracy >= 0.85  # it learned the strokes; not all: the noise is strong
    for target, artifact in artifacts.items():
        report = artifact["report"]
        assert artifact["signature"] == _expected_signature(target), target
        assert report["runtime"] == ("onnxruntime" if target.startswith("onnx-") else "litert")
        assert report["original_size_bytes"] == weights  # the weights, not the .keras file
        quality = report["quality"]
        assert quality["samples"] == trained.evaluation.size
        assert quality["original_accuracy"] == pytest.approx(trained.accuracy, abs=1e-6)
        if target in INT8_TARGETS:
            assert abs(quality["accuracy_delta_pt"]) <= 1.0 + 1e-9, (target, quality)
            assert quality["top1_agreement"] >= 0.97, (target, quality)
            assert report["details"]["int8_weight_share"] >= 0.9, report["details"]
        else:  # float conversions compute what Keras does
            assert quality["accuracy_delta_pt"] == 0.0, (target, quality)
            assert quality["top1_agreement"] == 1.0
            limit = 2e-2 if target == "onnx-fp16" else 1e-4
            assert quality["max_rel_error"] < limit, (target, quality)
    full = artifacts["tflite-full-int8"]["report"]["details"]
    assert full["calibration_samples"] == trained.calibration.size
    assert "Optimize.DEFAULT" in artifacts["tflite-int8"]["report"]["details"]["quantization"]
    assert artifacts["onnx-int8"]["report"]["details"]["quantization"] == "static"
    for fp32, int8 in (("onnx-fp32", "onnx-int8"), ("tflite-fp32", "tflite-int8")):
        assert artifacts[fp32]["size"] / artifacts[int8]["size"] > 3.0, (fp32, int8)
    seen = {t: _agent_validates(files, "strokes", t) for t in TARGETS}
    float_accuracy = artifacts["onnx-fp32"]["report"]["quality"]["original_accuracy"]
    print(f"\nstrokes (Keras, {summary['original_params']:,} params, float {float_accuracy:.2%})")
    for target, artifact in artifacts.items():
        report, quality = artifact["report"], artifact["report"]["quality"]
        print(
            f"  {target:17} {artifact['size']:>7,} B  {report['size_ratio']:5.2f}x  accuracy "
            f"{quality['accuracy']:.2%} ({quality['accuracy_delta_pt']:+.2f} pt)  top-1 "
            f"agreement {quality['top1_agreement']:.3f}  agent golden max err {seen[target]:.4g}"
        )
    shown = _invoke(files, "show", "strokes:1")
    assert shown.exit_code == 0, shown.output
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80


@pytest.mark.parametrize("kind", ["h5", "saved_model"])
def test_h5_and_savedmodel_sources_convert_to_the_same_signature(files, kind):
    result = _invoke(
        files, "compress", str(files[kind]), "--name", f"strokes-{kind}", "--version", "1",
        "-t", "onnx-fp32", "-t", "tflite-fp32", "-t", "tflite-int8",
        "--eval", str(files["eval"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    fmt = {"h5": "Keras (legacy .h5)", "saved_model": "TensorFlow SavedModel"}[kind]
    assert record["summary"]["source_format"] == fmt
    sha, size = source_identity(files[kind])
    assert (record["source_sha256"], record["source_size"]) == (sha, size)
    for artifact in record["artifacts"]:
        assert artifact["signature"] == SIGNATURE, artifact["target"]
        quality = artifact["report"]["quality"]
        assert quality["top1_agreement"] >= (0.97 if artifact["target"] == "tflite-int8" else 1.0)


def test_a_model_with_two_named_inputs_and_a_dict_output_keeps_its_names(tmp_path):
    """Every artifact names and orders the tensors as the serving signature (by name): the dict
    output's keys, not tf2onnx's or TFLiteConverter's own names."""
    keras = keras_module()
    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 1), name="pixels")
    extra = keras.Input((3,), name="context")
    x = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, activation="relu")(image))
    x = keras.layers.Concatenate()([x, extra])
    outputs = {"zscore": keras.layers.Dense(2)(x), "class_logits": keras.layers.Dense(5)(x)}
    model = keras.Model([image, extra], outputs)
    path = tmp_path / "two.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    evaluation = CompressionData(
        evaluation=Dataset(
            inputs={
                "pixels": rng.normal(size=(20, 8, 8, 1)).astype(np.float32),
                "context": rng.normal(size=(20, 3)).astype(np.float32),
            }
        )
    )
    recipe = Recipe(targets=("onnx-fp32", "tflite-fp32"), task="regression")
    result = compress(keras_source(path), recipe, evaluation, tmp_path / "work")
    want = [("class_logits", [None, 5]), ("zscore", [None, 2])]
    assert [(s.name, list(s.shape)) for s in result.signature.outputs] == want
    assert sorted(s.name for s in result.signature.inputs) == ["context", "pixels"]
    for artifact in result.artifacts:
        assert artifact.signature == result.signature, artifact.target
        errors = artifact.report.details["output_errors"]
        assert list(errors) == ["class_logits", "zscore"]
        assert max(e["max_abs_error"] for e in errors.values()) < 1e-4, artifact.target


def _no_signature_saved_model(path: Path) -> Path:
    tf = tensorflow_module()
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.double = tf.function(lambda x: x * module.scale)
    tf.saved_model.save(module, str(path))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", "not a Keras .keras archive (a .keras file is a zip)"),
        ("bad-config", "Keras cannot load it"),
        ("no-signature", "the SavedModel has no 'serving_default' signature (it has none)"),
        ("not-savedmodel", "a directory, but not a TensorFlow SavedModel (no saved_model.pb)"),
        ("prune", "pruning and distillation need an ONNX or torch model; Keras (.keras) input"),
        ("no-calibration", "tflite-full-int8 needs calibration data"),
        ("nchw-data", "dimension"),
    ],
)
def test_bad_keras_inputs_exit_1_and_register_nothing(files, tmp_path, case, message):
    before = _state(files)
    model, eval_file, args = files["keras"], files["eval"], ["-t", "tflite-fp32"]
    if case == "truncated":
        model = tmp_path / "strokes.keras"
        model.write_bytes(files["keras"].read_bytes()[:2000])
    elif case == "bad-config":
        model = tmp_path / "strokes.keras"
        with zipfile.ZipFile(model, "w") as archive:
            archive.writestr("config.json", "{not json")
            archive.writestr("metadata.json", "{}")
    elif case == "no-signature":
        model = _no_signature_saved_model(tmp_path / "no-signature")
    elif case == "not-savedmodel":
        model = tmp_path / "plain-dir"
        model.mkdir()
        (model / "weights.bin").write_bytes(b"\0" * 16)
    elif case == "prune":
        args = ["-t", "onnx-fp32", "--prune", "0.5"]
    elif case == "no-calibration":
        args = ["-t", "tflite-full-int8"]
    elif case == "nchw-data":  # the model is NHWC
        eval_file = tmp_path / "nchw.npz"
        np.savez(eval_file, image=np.zeros((4, 1, 16, 16), np.float32))
    result = _invoke(
        files, "compress", str(model), "--name", "bad", "--version", "1", *args,
        "--eval", str(eval_file),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert message in said[said.index("error: ") :], result.stderr
    assert "Traceback" not in result.output
    assert _state(files) == before
