"""``edgefleet model compress | list | show`` end to end through Typer's CliRunner, on model files
(TorchScript, torch.export, ONNX) the tests write, including the bad inputs that must exit non-zero
and leave the store unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgefleet.controller.cli import app
from support.models_compress import WideMlp, trained_mlp, two_input_data, two_input_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    model, train, held_out = trained_mlp(seed=1)
    paths = {
        "data": root / "data",
        "eval": root / "eval.npz",
        "train": root / "train.npz",
        "calib": root / "calib.npz",
        "ts": root / "mlp.pt",
        "pt2": root / "mlp.pt2",
        "onnx": two_input_onnx(root / "two.onnx"),
        "two_eval": root / "two.npz",
    }
    held_out.save(paths["eval"])
    train.save(paths["train"])
    train.take(slice(0, 64)).save(paths["calib"])
    two_input_data(32, seed=5).save(paths["two_eval"])
    example = (torch.from_numpy(held_out.inputs["features"][:2]),)
    torch.jit.save(torch.jit.trace(model, example), str(paths["ts"]))
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, example, dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, str(paths["pt2"]))
    return paths


def _invoke(files: dict[str, Path], *args: str):
    return runner.invoke(app, ["model", *args, "--data-dir", str(files["data"])])


def _state(files: dict[str, Path]) -> tuple[list, int]:
    listed = _invoke(files, "list", "--json")
    assert listed.exit_code == 0, listed.output
    store = files["data"] / "artifacts"
    blobs = sum(1 for _ in store.glob("??/*")) if store.exists() else 0
    return json.loads(listed.stdout), blobs


def test_compress_torchscript_then_list_and_show(files: dict[str, Path]) -> None:
    result = _invoke(
        files,
        "compress",
        str(files["ts"]),
        "--name",
        "mlp-ts",
        "--version",
        "1",
        "-t",
        "onnx-fp32",
        "-t",
        "onnx-int8",
        "--eval",
        str(files["eval"]),
        "--calib",
        str(files["calib"]),
        "--prune",
        "0.3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert [a["target"] for a in record["artifacts"]] == ["onnx-fp32", "onnx-int8"]
    fp32 = record["artifacts"][0]
    assert fp32["report"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert fp32["signature"]["inputs"][0] == {
        "name": "features",
        "dtype": "float32",
        "shape": [None, 32],
    }
    assert Path(fp32["path"]).is_file()

    shown = _invoke(files, "show", "mlp-ts:1", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["artifacts"] == record["artifacts"]
    table = _invoke(files, "show", "mlp-ts")
    assert table.exit_code == 0
    print(table.stdout)
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 80, table.stdout  # no TTY: 80 columns, nothing folded
    int8 = next(a for a in record["artifacts"] if a["target"] == "onnx-int8")
    rows = [line.split() for line in lines if line.split()[:1] == ["onnx-int8"]]
    assert len(rows) == 3  # one row in each of the three tables
    assert rows[0][1:4] == [
        "onnxruntime",
        f"{int8['size']:,}",
        f"{int8['report']['size_ratio']:.2f}x",
    ]
    assert rows[1][1] == f"{100 * int8['report']['quality']['accuracy']:.2f}%"
    assert rows[2][1] == f"{int8['report']['latency']['mean_ms']:.3f}"
    assert "mlp-ts:1" in table.stdout
    assert int8["report"]["latency"]["host"] in table.stdout.replace("\n", " ")
    models, _ = _state(files)
    assert {"name": "mlp-ts", "versions": ["1"]} in [
        {k: m[k] for k in ("name", "versions")} for m in models
    ]


def test_compress_torch_export_with_distillation_to_tflite(files: dict[str, Path]) -> None:
    result = _invoke(
        files,
        "compress",
        str(files["pt2"]),
        "--name",
        "mlp-kd",
        "--version",
        "1",
        "-t",
        "tflite-full-int8",
        "--eval",
        str(files["eval"]),
        "--train",
        str(files["train"]),
        "--distill-student",
        "mlp:32",
        "--epochs",
        "3",
        "--prune",
        "0.5",
        "--finetune-epochs",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    distill = record["summary"]["distillation"]
    assert distill["student_params"] == 32 * 32 + 32 + 32 * 10 + 10
    assert {"teacher_accuracy", "distilled_accuracy", "scratch_accuracy"} <= set(distill)
    art = record["artifacts"][0]
    assert art["signature"]["inputs"][0]["dtype"] == "int8"
    assert art["report"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_compress_onnx_prints_the_report_table(files: dict[str, Path]) -> None:
    result = _invoke(
        files,
        "compress",
        str(files["onnx"]),
        "--name",
        "two",
        "--version",
        "1",
        "-t",
        "onnx-fp16",
        "--eval",
        str(files["two_eval"]),
        "--task",
        "regression",
    )
    assert result.exit_code == 0, result.output
    assert "onnx-fp16" in result.stdout
    assert "two:1" in result.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("not-a-model", "not an ONNX, TorchScript or torch.export model"),
        ("names", "the model expects ['features']"),
        ("shape", "dimension 1: 8 != 16"),
        ("target", "unknown target 'onnx-int3'"),
        ("tflite-from-torchscript", "needs torch.export"),
        ("edgetpu", "edgetpu_compiler is not on PATH"),
        ("bad-npz", "not a readable .npz"),
        ("no-calibration", "tflite-full-int8 needs calibration data"),
    ],
)
def test_bad_inputs_exit_non_zero_and_change_nothing(files, tmp_path, case, message) -> None:
    before = _state(files)
    model, eval_file, target = files["ts"], files["eval"], "onnx-fp32"
    if case == "missing":
        model = tmp_path / "nope.onnx"
    elif case == "not-a-model":
        model = tmp_path / "notes.pt"
        model.write_text("not a model")
    elif case == "names":
        eval_file = tmp_path / "named.npz"
        np.savez(eval_file, pixels=np.zeros((4, 32), np.float32))
    elif case == "shape":
        model, eval_file = files["onnx"], tmp_path / "shape.npz"
        np.savez(
            eval_file, features=np.zeros((4, 8), np.float32), token_ids=np.zeros((4, 4), np.int64)
        )
    elif case == "target":
        target = "onnx-int3"
    elif case == "tflite-from-torchscript":
        target = "tflite-fp32"
    elif case == "edgetpu":
        model, target = files["pt2"], "edgetpu"
    elif case == "no-calibration":
        model, target = files["pt2"], "tflite-full-int8"
    elif case == "bad-npz":
        eval_file = tmp_path / "bad.npz"
        eval_file.write_bytes(b"garbage")
    result = _invoke(
        files,
        "compress",
        str(model),
        "--name",
        "bad",
        "--version",
        "1",
        "-t",
        target,
        "--eval",
        str(eval_file),
    )
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.output
    assert _state(files) == before


def test_show_unknown_model_fails(files: dict[str, Path]) -> None:
    result = _invoke(files, "show", "ghost:9")
    assert result.exit_code == 1
    assert "no model 'ghost:9'" in result.stderr
    brackets = _invoke(files, "show", "[bold]ghost:9")  # error text is never markup
    assert "no model '[bold]ghost:9'" in brackets.stderr, brackets.stderr


def test_structured_pruning_of_a_torchscript_file_is_refused(files: dict[str, Path]) -> None:
    result = _invoke(
        files,
        "compress",
        str(files["ts"]),
        "--name",
        "s",
        "--version",
        "1",
        "-t",
        "onnx-fp32",
        "--eval",
        str(files["eval"]),
        "--prune",
        "0.5",
        "--structured",
    )
    assert result.exit_code == 1
    assert "structured pruning and fine-tuning need an ordinary nn.Module" in " ".join(
        result.stderr.split()
    )
    assert WideMlp  # the model class the files were built from
