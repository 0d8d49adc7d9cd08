"""Stateful models compressed from data files that say so: Silero VAD (audio [N, 576], a state
[2, N, 128] whose batch is axis 1, fed back from ``stateN``; an int64 scalar sample rate) as
sequences of 4 calls of 512 new samples at 16 kHz, built with numpy as the README shows, through
``compress()`` and the CLI; and a torch recurrent cell whose hidden state is fed back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner, Result

from edgefleet.controller.cli import app
from edgefleet.controller.compress import (
    CompressionData,
    Dataset,
    Recipe,
    compress,
    load_npz,
    onnx_source,
    torch_source,
)
from edgefleet.controller.compress.data import (
    FeedbackError,
    InputLayout,
    Layout,
    SampleLayoutError,
    SequenceLayout,
)
from edgefleet.controller.config import Settings, get_settings
from edgefleet.shared.manifest import GoldenPair, TensorData
from support.onnx_session import cpu_session
from support.pretrained import pretrained_model

SR, HOP, CONTEXT, STEPS = 16000, 512, 64, 4  # Silero v5 takes 64 samples of context per call
VAD_LAYOUT = {
    "inputs": {"state": {"whole": True, "batch_axis": 1}, "sr": {"whole": True}},
    "sequence": {"steps": STEPS, "feedback": {"state": "stateN"}},
}
# First three formants (Hz, bandwidth) of /a/, /i/, /o/, /e/.
VOWELS = (((730, 90), (1090, 110), (2440, 170)), ((270, 60), (2290, 100), (3010, 150)),
          ((570, 70), (840, 80), (2410, 160)), ((440, 70), (1020, 80), (2240, 140)))  # fmt: skip
KINDS = ("speech", "noise", "tone", "speech", "bursts")

runner = CliRunner()


def _voiced(rng: np.random.Generator, n: int) -> np.ndarray:
    """A vowel: a glottal pulse train (f0 100-220 Hz with vibrato) shaped by formants."""
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    pulses = (np.diff(np.floor(np.cumsum(f0) / SR), prepend=0.0) > 0).astype(np.float64)
    freqs = np.fft.rfftfreq(n, 1 / SR)
    vowel = VOWELS[rng.integers(len(VOWELS))]
    envelope = sum(1 / (1 + ((freqs - f) / (bw / 2)) ** 2) for f, bw in vowel) / (1 + freqs / 300)
    voiced = np.fft.irfft(np.fft.rfft(pulses) * envelope, n)
    return voiced / (np.abs(voiced).max() + 1e-12)


def vad_clip(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Background noise plus syllable-long bursts of vowels, a tone, or clicks."""
    x = rng.normal(0.0, 0.005, n)
    pos = 0
    while kind != "noise" and pos < n:
        length = int(rng.uniform(0.08, 0.25) * SR)
        if kind == "speech":
            burst = _voiced(rng, length)
        elif kind == "tone":
            burst = np.sin(2 * np.pi * rng.uniform(300, 3000) * np.arange(length) / SR)
        else:
            burst = rng.normal(0.0, 1.0, length) * (rng.random(length) < 0.02)
        shaped = burst * np.hanning(length) * rng.uniform(0.2, 0.6)
        end = min(n, pos + length)
        x[pos:end] += shaped[: end - pos]
        pos += length + int(rng.uniform(0.02, 0.08) * SR)
    return x.astype(np.float32)


def vad_npz(path: Path, sequences: int, seed: int, layout: dict | None = None) -> Path:
    """The README's recipe: STEPS windows of CONTEXT + HOP samples per clip (step axis after the
    batch axis), the first state whole, the sample rate a whole int64 scalar."""
    rng = np.random.default_rng(seed)
    audio = np.stack([vad_clip(rng, KINDS[i % len(KINDS)], CONTEXT + STEPS * HOP)
                      for i in range(sequences)])  # fmt: skip
    windows = np.stack([audio[:, s * HOP : s * HOP + CONTEXT + HOP] for s in range(STEPS)], axis=1)
    np.savez(
        path,
        input=windows,
        state=np.zeros((2, 1, 128), np.float32),
        sr=np.array(SR, np.int64),
        layout=json.dumps(layout or VAD_LAYOUT),
    )
    return path


def _array(tensor: TensorData) -> np.ndarray:
    return np.frombuffer(tensor.raw(), dtype=tensor.dtype).reshape(tensor.shape)


def _session(path: Path) -> ort.InferenceSession:
    """A session as the pipeline's evaluation runs it: one thread, so dynamic int8 (whose
    results depend on the thread count by a few thousandths) computes what it measured."""
    return cpu_session(path, threads=1)


def _run_sequences(path: Path, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities, and the states fed, call by call (sequence by sequence), of a model run
    over each sequence by hand with its own state fed back: one call per step."""
    session = _session(path)
    n = windows.shape[0]
    state = np.zeros((2, n, 128), np.float32)
    probabilities, fed = [], []
    for step in range(STEPS):
        fed.append(state)
        probability, state = session.run(
            None, {"input": windows[:, step], "state": state, "sr": np.array(SR, np.int64)}
        )
        probabilities.append(probability[:, 0])
    by_call = np.stack(probabilities, axis=1).reshape(-1)
    return by_call, np.stack(fed, axis=2).reshape(2, n * STEPS, 128)


def _run_calls(path: Path, windows: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Probabilities of every call at once (as the evaluation batches them), the given states
    fed: what the model does call by call with the source model's state."""
    session = _session(path)
    flat = windows.reshape(-1, windows.shape[-1])
    (probability, _) = session.run(
        None, {"input": flat, "state": states, "sr": np.array(SR, np.int64)}
    )
    return probability[:, 0]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return get_settings(data_dir=tmp_path_factory.mktemp("data"), latency_runs=5)


@pytest.fixture(scope="module")
def vad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vad")
    return {
        "eval": vad_npz(root / "eval.npz", sequences=10, seed=1),
        "calib": vad_npz(root / "calib.npz", sequences=16, seed=2),
    }


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_silero_vad_sequences_compress_to_onnx_int8_with_agreement(
    settings: Settings, vad_files: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    model = pretrained_model("silero-vad-op15")
    evaluation = load_npz(vad_files["eval"])
    result = compress(
        onnx_source(model),
        Recipe(targets=("onnx-fp32", "onnx-int8"), onnx_int8_mode=mode),  # type: ignore[arg-type]
        CompressionData(evaluation=evaluation, calibration=load_npz(vad_files["calib"])),
        tmp_path,
        settings=settings,
    )
    assert result.summary["sequence"] == {
        "sequences": 10, "steps": 4, "calls": 40, "feedback": {"state": "stateN"},
        "fed_back_from": "the source model (float), call by call",
    }  # fmt: skip
    fp32, int8 = result.reports["onnx-fp32"], result.reports["onnx-int8"]
    assert fp32.quality.samples == int8.quality.samples == 40
    assert fp32.quality.max_abs_error == 0.0
    assert fp32.details["sequence"]["closed_loop_max_abs_error"] == 0.0
    assert int8.details["quantization"] == mode
    assert int8.details["int8_heavy_ops"]["LSTM"] == 2

    # The report's figures are what the artifact does, recomputed by hand here.
    artifact = next(a for a in result.artifacts if a.target == "onnx-int8")
    windows = evaluation.inputs["input"]
    want, source_states = _run_sequences(model, windows)
    per_call = _run_calls(artifact.file, windows, source_states)
    closed, _ = _run_sequences(artifact.file, windows)
    errors = int8.details["output_errors"]
    assert errors["output"]["max_abs_error"] == pytest.approx(
        np.abs(per_call - want).max(), abs=1e-5
    )
    loop = int8.details["sequence"]
    assert (loop["sequences"], loop["steps"], loop["feedback"]) == (10, 4, {"state": "stateN"})
    assert loop["closed_loop_output_errors"]["output"]["max_abs_error"] == pytest.approx(
        np.abs(closed - want).max(), abs=1e-5
    )
    assert int8.quality.max_abs_error >= errors["output"]["max_abs_error"]  # the state's too
    if mode == "dynamic":  # int8 LSTM weights: the speech decisions stay the float model's
        assert errors["output"]["max_abs_error"] < 0.05
        assert loop["closed_loop_output_errors"]["output"]["max_abs_error"] < 0.05
        assert ((closed > 0.5) == (want > 0.5)).all()
        assert 0 < (want > 0.5).sum() < want.size  # the clips hold speech and non-speech

    # Golden pairs are single calls the device replays, the state fed back from the source.
    golden = artifact.golden
    assert len(golden.pairs) == settings.golden_pairs == 8
    first: GoldenPair = golden.pairs[0]
    assert {k: t.shape for k, t in first.inputs.items()} == {
        "input": (1, 576), "state": (2, 1, 128), "sr": (),
    }  # fmt: skip
    assert (first.inputs["sr"].dtype, int(_array(first.inputs["sr"]))) == ("int64", SR)
    np.testing.assert_array_equal(_array(first.inputs["state"]), 0.0)
    np.testing.assert_allclose(
        _array(golden.pairs[1].inputs["state"]), source_states[:, 1:2], rtol=1e-5, atol=1e-6
    )
    session = cpu_session(str(artifact.file))
    for pair in golden.pairs:
        outputs = session.run(None, {k: _array(t) for k, t in pair.inputs.items()})
        for got, tensor in zip(outputs, pair.outputs.values(), strict=True):
            np.testing.assert_allclose(got, _array(tensor), atol=golden.atol, rtol=golden.rtol)
    assert golden.compare == "allclose"


def _invoke(data_dir: Path, *args: str) -> Result:
    return runner.invoke(app, ["model", *args, "--data-dir", str(data_dir)])


def test_silero_vad_with_if_subgraphs_through_the_cli(
    vad_files: dict[str, Path], tmp_path: Path
) -> None:
    model = pretrained_model("silero-vad")
    data_dir = tmp_path / "data"
    result = _invoke(
        data_dir, "compress", str(model), "--name", "vad", "--version", "1",
        "-t", "onnx-int8", "--int8-mode", "dynamic",
        "--eval", str(vad_files["eval"]), "--calib", str(vad_files["calib"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["summary"]["sequence"]["calls"] == 40
    (artifact,) = record["artifacts"]
    report = artifact["report"]
    assert report["quality"]["samples"] == 40
    details = report["details"]
    # both If branches' LSTMs, and their convolutions (int8 weights behind DequantizeLinear)
    assert details["int8_heavy_ops"] == {"Conv": 12, "LSTM": 4}
    assert details["output_errors"]["output"]["max_abs_error"] < 0.05
    assert details["sequence"]["closed_loop_output_errors"]["output"]["max_abs_error"] < 0.05
    assert artifact["golden"]["pairs"] == 8
    signature = artifact["signature"]["inputs"]
    assert [(s["name"], s["dtype"], s["shape"]) for s in signature] == [
        ("input", "float32", [None, None]), ("state", "float32", [2, None, 128]),
        ("sr", "int64", []),
    ]  # fmt: skip
    shown = runner.invoke(
        app, ["model", "show", "vad:1", "--data-dir", str(data_dir)], terminal_width=80
    )
    assert shown.exit_code == 0, shown.output
    assert "onnx-int8" in shown.output


def test_a_fed_back_output_the_model_lacks_is_named_and_nothing_is_registered(
    vad_files: dict[str, Path], tmp_path: Path
) -> None:
    wrong = {**VAD_LAYOUT, "sequence": {"steps": STEPS, "feedback": {"state": "hidden"}}}
    bad = vad_npz(tmp_path / "bad.npz", sequences=2, seed=3, layout=wrong)
    data_dir = tmp_path / "data"
    result = _invoke(
        data_dir, "compress", str(pretrained_model("silero-vad-op15")), "--name", "vad",
        "--version", "1", "-t", "onnx-fp32", "--eval", str(bad),
    )  # fmt: skip
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "output 'hidden' is fed back to input 'state' in the evaluation data, but the model" in (
        message
    )
    assert "['output', 'stateN']" in message
    listed = _invoke(data_dir, "list", "--json")
    assert json.loads(listed.stdout) == []
    with pytest.raises(FeedbackError):
        compress(
            onnx_source(pretrained_model("silero-vad-op15")),
            Recipe(targets=("onnx-fp32",)),
            CompressionData(evaluation=load_npz(bad)),
            tmp_path / "work",
        )


class RecurrentCell(nn.Module):
    """A GRU cell over frames: (x [N, 8], h [N, 16]) -> (score [N, 3], h' [N, 16])."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.cell(x, h)
        return self.head(state), state


def _cell_data(n: int, seed: int, steps: int = 5) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        {"x": rng.standard_normal((n, steps, 8)).astype(np.float32),
         "h": np.zeros((n, 16), np.float32)},
        layout=Layout(sequence=SequenceLayout(steps=steps, feedback={"h": "output_1"})),
    )  # fmt: skip


def test_a_torch_recurrent_cell_takes_its_hidden_state_back(
    settings: Settings, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    module = RecurrentCell()
    result = compress(
        torch_source(module),
        Recipe(targets=("onnx-fp32", "onnx-int8"), onnx_int8_mode="dynamic"),
        CompressionData(evaluation=_cell_data(12, seed=1)),
        tmp_path,
        settings=settings,
    )
    fp32 = next(a for a in result.artifacts if a.target == "onnx-fp32")
    assert [(s.name, s.shape) for s in fp32.signature.inputs] == [
        ("x", (None, 8)),
        ("h", (None, 16)),
    ]
    h = np.zeros((12, 16), np.float32)
    x = _cell_data(12, seed=1).inputs["x"]
    with torch.no_grad():
        for step in range(2):
            _, state = module(torch.from_numpy(x[:, step]), torch.from_numpy(h))
            h = state.numpy()
    pair = fp32.golden.pairs[2]  # sequence 0, call 2: the state after two calls
    np.testing.assert_allclose(_array(pair.inputs["h"]), h[:1], rtol=1e-5, atol=1e-6)
    int8 = result.reports["onnx-int8"]
    assert int8.quality.samples == 60
    assert int8.details["sequence"]["closed_loop_max_abs_error"] < 0.1
    assert result.reports["onnx-fp32"].details["sequence"]["closed_loop_max_abs_error"] < 1e-5


def test_a_torch_model_refuses_a_layout_its_export_cannot_keep(tmp_path: Path) -> None:
    data = _cell_data(4, seed=2)
    whole = Dataset(
        {"x": data.inputs["x"], "h": np.zeros((1, 16), np.float32)},
        layout=Layout(
            inputs={"h": InputLayout(batch_axis=0, whole=True)}, sequence=data.layout.sequence
        ),
    )
    with pytest.raises(SampleLayoutError, match=r"input 'h' of the evaluation data is whole: a t"):
        compress(
            torch_source(RecurrentCell()),
            Recipe(targets=("onnx-fp32",)),
            CompressionData(evaluation=whole),
            tmp_path,
        )


def test_a_stateful_model_imported_prebuilt_is_evaluated_over_its_sequences(
    vad_files: dict[str, Path], tmp_path: Path
) -> None:
    """``model import`` reads the same layout: the prebuilt fp32 file is its own reference, its
    sequences are run with its state fed back, and golden pairs are single calls."""
    model = pretrained_model("silero-vad-op15")
    data_dir = tmp_path / "data"
    result = _invoke(
        data_dir, "import", "vad-prebuilt:1", "-a", f"onnx-fp32={model}",
        "--eval", str(vad_files["eval"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads(result.stdout)["artifacts"]
    quality = artifact["report"]["quality"]
    assert quality["samples"] == 40  # 10 sequences of STEPS calls
    assert quality["max_abs_error"] == 0.0  # the reference against itself
    assert artifact["golden"]["pairs"] == 8
    assert [s["name"] for s in artifact["signature"]["inputs"]] == ["input", "state", "sr"]
