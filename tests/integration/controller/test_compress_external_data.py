"""ONNX sources with external data (every tensor in a file beside the ``.onnx``, as
``onnx.save(..., save_as_external_data=True)`` writes them) compress into self-contained
artifacts: each one file with the weights inside, whose outputs are the source's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import (
    CompressionData,
    Recipe,
    compress,
    compress_and_register,
    load_model_file,
)
from edgefleet.controller.compress.external_data import ExternalDataError, external_tensors
from edgefleet.controller.compress.runners import open_runner, run_batched
from edgefleet.controller.compress.sources import OnnxSource
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.registry import ModelRegistry
from edgefleet.shared.hashing import sha256_file
from support.models_compress import two_input_data, two_input_onnx
from support.onnx_session import cpu_session

TARGETS = ("onnx-fp32", "onnx-int8")
DATA_FILE = "two.onnx.data"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return get_settings(data_dir=tmp_path_factory.mktemp("data"), latency_runs=5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same model twice: self-contained, and with every tensor in ``two.onnx.data``."""
    embedded = two_input_onnx(tmp_path_factory.mktemp("embedded") / "two.onnx")
    external = tmp_path_factory.mktemp("external") / "two.onnx"
    onnx.save(
        onnx.load(str(embedded)), str(external), save_as_external_data=True,
        all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=0,
        convert_attribute=True,
    )  # fmt: skip
    return {"embedded": embedded, "external": external}


def _external_in(path: Path) -> list[str]:
    return [t.name for _, t in external_tensors(onnx.load(str(path), load_external_data=False))]


def _run(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = cpu_session(str(path))
    return session.run(None, inputs)[0]


def _compress(path: Path, settings: Settings, work: Path):
    source = load_model_file(path)
    assert isinstance(source, OnnxSource)
    recipe = Recipe(targets=TARGETS, onnx_int8_mode="static", task="regression")
    data = CompressionData(
        evaluation=two_input_data(64, seed=1), calibration=two_input_data(64, seed=2)
    )
    return source, compress(source, recipe, data, work, settings=settings)


def _compress_and_register(
    registry: ModelRegistry, settings: Settings, path: Path, version: str
) -> None:
    compress_and_register(
        registry, "ext", version, load_model_file(path), Recipe(targets=("onnx-fp32",)),
        CompressionData(evaluation=two_input_data(8, seed=1)), settings=settings,
    )  # fmt: skip


def test_the_source_really_keeps_its_weights_outside(models: dict[str, Path]) -> None:
    external = _external_in(models["external"])
    assert len(external) >= 4  # every initializer, and Constant attributes too
    assert models["external"].stat().st_size < 2_000  # the graph only
    assert (models["external"].parent / DATA_FILE).stat().st_size > 10_000
    assert _external_in(models["embedded"]) == []


def test_every_artifact_is_one_file_with_the_source_outputs(
    models: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    source, result = _compress(models["external"], settings, tmp_path / "external")
    _, twin = _compress(models["embedded"], settings, tmp_path / "embedded")
    assert source.external_data is not None
    assert source.external_data.files == (DATA_FILE,)
    assert result.summary["external_data_packed"]["tensors"] == source.external_data.tensors
    evaluation = two_input_data(64, seed=1)
    reference = _run(models["external"], evaluation.inputs)
    artifacts = {a.target: a for a in result.artifacts}
    embedded = {a.target: a for a in twin.artifacts}
    assert set(artifacts) == set(TARGETS)
    for target, artifact in artifacts.items():
        # one file: nothing refers outside it, and it runs from a directory of its own
        assert _external_in(artifact.file) == [], target
        alone = tmp_path / "alone" / target / "model.onnx"
        alone.parent.mkdir(parents=True)
        alone.write_bytes(artifact.file.read_bytes())
        produced = run_batched(open_runner(alone, "onnxruntime"), evaluation.inputs)["scores"]
        # exactly what the same model quantized from a self-contained file gives
        np.testing.assert_array_equal(produced, _run(embedded[target].file, evaluation.inputs))
        if target == "onnx-fp32":
            np.testing.assert_array_equal(produced, reference)
        else:
            peak = float(np.abs(reference).max())
            assert np.abs(produced - reference).mean() <= 0.02 * peak
            assert artifact.report.details["quantization"] == "static"
    # sizes compare with the weights beside the source, not the graph-only .onnx
    data_size = (models["external"].parent / DATA_FILE).stat().st_size
    fp32 = artifacts["onnx-fp32"].report
    assert fp32.original_size_bytes == models["external"].stat().st_size + data_size
    assert 0.9 < fp32.size_ratio < 1.1


def test_a_missing_or_escaping_data_file_is_refused_naming_tensor_and_file(
    models: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    registry = ModelRegistry.from_settings(settings)
    model = onnx.load(str(models["external"]), load_external_data=False)

    def relocated(location: str, directory: Path) -> Path:
        moved = onnx.ModelProto()
        moved.CopyFrom(model)
        for _, tensor in external_tensors(moved):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "two.onnx"
        path.write_bytes(moved.SerializeToString())
        return path

    data = (models["external"].parent / DATA_FILE).read_bytes()
    (tmp_path / "outside.data").write_bytes(data)
    cases = {
        "missing": (relocated("gone.data", tmp_path / "missing"), "'gone.data'.*no such file"),
        "escaping": (
            relocated("../outside.data", tmp_path / "escaping"),
            r"'\.\./outside\.data'.*outside the model's directory",
        ),
        "absolute": (
            relocated(str(tmp_path / "outside.data"), tmp_path / "absolute"),
            "outside.data'.*an absolute path",
        ),
    }
    short = relocated(DATA_FILE, tmp_path / "short")
    (short.parent / DATA_FILE).write_bytes(data[: len(data) // 2])
    cases["short"] = (short, f"'{DATA_FILE}'.*the file is short")
    for case, (path, reason) in cases.items():
        with pytest.raises(ExternalDataError, match=reason) as caught:
            _compress_and_register(registry, settings, path, case)
        assert f"tensor {caught.value.tensor!r}" in str(caught.value), case
        assert caught.value.tensor in {t.name for _, t in external_tensors(model)}
    assert registry.list_models() == []


def test_the_recorded_source_digest_covers_the_weights_beside_the_graph(
    models: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    """Two sources with the same graph file and different weights in the data file beside it
    are different sources; a self-contained file's digest is its sha256, as before."""
    registry = ModelRegistry.from_settings(settings)
    changed = tmp_path / "changed" / "two.onnx"
    changed.parent.mkdir()
    shutil.copy(models["external"], changed)
    data = bytearray((models["external"].parent / DATA_FILE).read_bytes())
    data[-4:] = np.float32(123.0).tobytes()  # the last weight, a value it never had
    (changed.parent / DATA_FILE).write_bytes(bytes(data))
    for version, path in (("orig", models["external"]), ("changed", changed)):
        _compress_and_register(registry, settings, path, version)
    _compress_and_register(registry, settings, models["embedded"], "embedded")
    orig, other, embedded = (
        registry.get_version("ext", v) for v in ("orig", "changed", "embedded")
    )
    assert changed.read_bytes() == models["external"].read_bytes()  # the same graph file
    assert orig.source_sha256 != other.source_sha256
    assert orig.source_sha256 != sha256_file(models["external"])  # not the graph's alone
    assert embedded.source_sha256 == sha256_file(models["embedded"])
