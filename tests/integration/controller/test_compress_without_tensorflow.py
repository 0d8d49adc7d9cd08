"""Without the controller's ``tensorflow`` extra: ``edgefleet model compress`` runs in a child
process where TensorFlow, tf-keras, tf2onnx and onnx2tf cannot be imported (a meta-path finder
refuses them before edgefleet is imported). A Keras file, a SavedModel directory and LiteRT
targets from ONNX are refused, naming the extra to install, and nothing is registered; ONNX
targets from ONNX still work: the extra is optional."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.controller.cli import app
from support.keras_models import export_saved_model, keras_module
from support.models_compress import two_input_data, two_input_onnx

pytestmark = pytest.mark.slow
INSTALL = "pip install 'edgefleet-controller[tensorflow]'"
BLOCKED = ("tensorflow", "tf_keras", "tf2onnx", "onnx2tf")
WITHOUT_TENSORFLOW = f"""
import importlib.abc
import sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from edgefleet.controller.cli import main

sys.argv = ["edgefleet", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("no-tensorflow")
    keras = keras_module()
    inputs = keras.Input((16,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    paths = {
        "data": root / "data",
        "keras": root / "dense.keras",
        "saved_model": export_saved_model(model, root / "dense-savedmodel"),
        "onnx": two_input_onnx(root / "two.onnx"),
        "eval": root / "eval.npz",
    }
    model.save(paths["keras"])
    two_input_data(16, seed=3).save(paths["eval"])
    return paths


def _edgefleet(files: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT_TENSORFLOW, "model", *args]
    return subprocess.run(
        [*command, "--data-dir", str(files["data"])],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def _registered(files: dict[str, Path]) -> tuple[list, int]:
    """The registry's models and the store's blobs (read here: TensorFlow plays no part)."""
    listed = CliRunner().invoke(app, ["model", "list", "--json", "--data-dir", str(files["data"])])
    assert listed.exit_code == 0, listed.output
    store = files["data"] / "artifacts"
    return json.loads(listed.stdout), sum(1 for _ in store.glob("??/*")) if store.exists() else 0


@pytest.mark.parametrize(
    ("source", "targets", "message"),
    [
        (
            "keras",
            ["tflite-fp32"],
            "reading a Keras (.keras) model ('dense.keras') needs TensorFlow",
        ),
        (
            "saved_model",
            ["onnx-fp32"],
            "reading a TensorFlow SavedModel ('dense-savedmodel') needs TensorFlow",
        ),
        (
            "onnx",
            ["onnx-fp32", "tflite-fp32", "tflite-int8"],
            "converting an ONNX model to tflite-fp32, tflite-int8 needs onnx2tf, which is not "
            "installed (missing: tensorflow, tf_keras, onnx2tf)",
        ),
    ],
)
def test_without_the_extra_a_source_or_target_that_needs_it_names_the_extra(
    files, source, targets, message
):
    before = _registered(files)
    result = _edgefleet(
        files, "compress", str(files[source]), "--name", f"no-tf-{source}", "--version", "1",
        *(a for t in targets for a in ("-t", t)), "--eval", str(files["eval"]),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    said = " ".join(result.stderr.split())
    assert message in said, result.stderr
    assert INSTALL in said, result.stderr
    assert "Traceback" not in result.stderr
    assert _registered(files) == before


def test_without_the_extra_onnx_targets_of_an_onnx_model_still_build(files):
    result = _edgefleet(
        files, "compress", str(files["onnx"]), "--name", "still", "--version", "1",
        "-t", "onnx-fp32", "-t", "onnx-fp16", "--eval", str(files["eval"]), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    built = [a["target"] for a in json.loads(result.stdout)["artifacts"]]
    assert built == ["onnx-fp32", "onnx-fp16"]
