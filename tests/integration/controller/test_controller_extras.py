"""The controller's optional extras, each missing in turn: the CLI runs in a child process where
the extra's modules cannot be imported (a meta-path finder refuses them before edgefleet is
imported), as on a machine that installed the controller without it.

- Without ``compress`` (torch, torch-pruning, scikit-learn) nor ``tflite``: ``model import``
  registers an ONNX artifact with its golden pairs and report, and never imports torch;
  ``model compress`` and ``demo`` are refused, naming what to install.
- Without ``tflite`` (litert-torch, torchao, ai-edge-quantizer): LiteRT targets from a torch
  model are refused before any work, naming the extra, and nothing is registered; ONNX targets
  from the same model still build.

``bench/install_size.py`` installs each extra for real and measures it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.models_compress import trained_mlp, two_input_data, two_input_onnx

pytestmark = pytest.mark.slow
COMPRESS_MODULES = ("torch", "torch_pruning", "sklearn")
TFLITE_MODULES = ("litert_torch", "torchao", "ai_edge_quantizer")
WITHOUT = """
import importlib.abc
import json
import sys

BLOCKED = set(json.loads(sys.argv[1]))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from edgefleet.controller.cli import app

try:
    app(sys.argv[2:], prog_name="edgefleet")
finally:
    loaded = sorted(m for m in BLOCKED if m in sys.modules)
    print(f"blocked modules loaded: {loaded}", file=sys.stderr)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extras")
    model, _, held_out = trained_mlp()
    sample = torch.from_numpy(held_out.inputs["features"][:2])
    paths = {
        "onnx": two_input_onnx(root / "two.onnx"),
        "onnx_eval": root / "two-eval.npz",
        "pt2": root / "mlp.pt2",
        "mlp_eval": root / "mlp-eval.npz",
    }
    two_input_data(16, seed=3).save(paths["onnx_eval"])
    held_out.save(paths["mlp_eval"])
    batch = {"features": {0: torch.export.Dim("batch")}}
    program = torch.export.export(model, (sample,), dynamic_shapes=batch)
    torch.export.save(program, str(paths["pt2"]))
    return paths


def _edgefleet(
    blocked: tuple[str, ...], data_dir: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT, json.dumps(blocked), *args]
    if args[0] == "model":
        command += ["--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _models(blocked: tuple[str, ...], data_dir: Path) -> list[dict[str, object]]:
    listed = _edgefleet(blocked, data_dir, "model", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def test_without_compress_import_registers_an_onnx_artifact_and_never_imports_torch(
    files, tmp_path
):
    blocked = COMPRESS_MODULES + TFLITE_MODULES
    result = _edgefleet(
        blocked, tmp_path, "model", "import", "two:1",
        "--artifact", f"onnx-fp32={files['onnx']}", "--eval", str(files["onnx_eval"]), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert [a["target"] for a in record["artifacts"]] == ["onnx-fp32"]
    assert "blocked modules loaded: []" in result.stderr
    shown = _edgefleet(blocked, tmp_path, "model", "show", "two:1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["artifacts"][0]["golden"]["pairs"] > 0


def test_without_compress_compress_and_the_demo_name_what_to_install(files, tmp_path):
    blocked = COMPRESS_MODULES + TFLITE_MODULES
    result = _edgefleet(
        blocked, tmp_path, "model", "compress", str(files["onnx"]), "--name", "two",
        "--version", "1", "-t", "onnx-fp32", "--eval", str(files["onnx_eval"]),
    )  # fmt: skip
    said = " ".join(result.stderr.split())
    assert result.returncode == 1, result.stderr
    assert "edgefleet model compress needs torch, which is not installed" in said, said
    assert "pip install 'edgefleet-controller[compress]'" in said, said
    assert "Traceback" not in result.stderr
    assert _models(blocked, tmp_path) == []

    demo = _edgefleet(blocked, tmp_path, "demo", "--exit", "--data-dir", str(tmp_path / "demo"))
    said = " ".join(demo.stdout.split())
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert "the demo needs torch (the controller's compress extra)" in said, said
    assert "litert-torch (the controller's tflite extra)" in said, said
    assert "pip install 'edgefleet-controller[compress,tflite]'" in said, said
    assert not (tmp_path / "demo").exists()  # refused before it started anything


def test_without_tflite_litert_targets_of_a_torch_model_are_refused_and_onnx_ones_build(
    files, tmp_path
):
    refused = _edgefleet(
        TFLITE_MODULES, tmp_path, "model", "compress", str(files["pt2"]), "--name", "mlp",
        "--version", "1", "-t", "onnx-fp32", "-t", "tflite-fp32", "-t", "tflite-int8",
        "--eval", str(files["mlp_eval"]),
    )  # fmt: skip
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1, refused.stderr
    assert "targets tflite-fp32, tflite-int8 from a torch model needs litert-torch" in said, said
    assert "pip install 'edgefleet-controller[tflite]'" in said, said
    assert "Traceback" not in refused.stderr
    assert _models(TFLITE_MODULES, tmp_path) == []

    built = _edgefleet(
        TFLITE_MODULES, tmp_path, "model", "compress", str(files["pt2"]), "--name", "mlp",
        "--version", "1", "-t", "onnx-fp32", "-t", "onnx-int8", "--eval",
        str(files["mlp_eval"]), "--json",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert [a["target"] for a in json.loads(built.stdout)["artifacts"]] == [
        "onnx-fp32",
        "onnx-int8",
    ]
    assert "blocked modules loaded: []" in built.stderr
