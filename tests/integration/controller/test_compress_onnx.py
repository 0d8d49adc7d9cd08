"""ONNX input with two inputs (one int64) and a dynamic batch dimension through every ONNX target,
plus the bad inputs that must fail clearly and leave the store unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress import (
    CompressionData,
    Dataset,
    Recipe,
    compress,
    compress_and_register,
    load_model_file,
    onnx_source,
)
from edgefleet.controller.compress.runners import open_runner, run_batched
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.errors import (
    DataMismatchError,
    ModelLoadError,
    UnsupportedStepError,
)
from edgefleet.controller.registry import ModelRegistry
from support.models_compress import two_input_data, two_input_onnx
from support.onnx_session import cpu_session

ONNX_TARGETS = ("onnx-fp32", "onnx-int8", "onnx-fp16")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return get_settings(data_dir=tmp_path_factory.mktemp("data"), latency_runs=10)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_input_onnx(tmp_path_factory.mktemp("model") / "two.onnx")


def _original(path: Path, data: Dataset) -> np.ndarray:
    session = cpu_session(str(path))
    return session.run(None, data.inputs)[0]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_two_input_onnx_every_onnx_target(
    model_path: Path, settings: Settings, tmp_path: Path, mode: str
) -> None:
    source = onnx_source(model_path)
    assert [(s.name, s.dtype, s.shape) for s in source.signature.inputs] == [
        ("features", "float32", (None, 16)),
        ("token_ids", "int64", (None, 4)),
    ]
    evaluation = two_input_data(64, seed=1)
    result = compress(
        source,
        Recipe(targets=ONNX_TARGETS, onnx_int8_mode=mode, task="regression"),  # type: ignore[arg-type]
        CompressionData(evaluation=evaluation, calibration=two_input_data(64, seed=2)),
        tmp_path,
        settings=settings,
    )
    reference = _original(model_path, evaluation)
    peak = float(np.abs(reference).max())
    for art in result.artifacts:
        report = art.report
        assert report.quality.top1_agreement is None  # 3 regression outputs: no classifier
        assert art.signature.inputs[1].dtype == "int64"
        assert art.signature.inputs[0].shape == (None, 16)  # dynamic batch kept
        runner = open_runner(art.file, "onnxruntime")
        batch = run_batched(runner, runner.to_native(evaluation.inputs))
        produced = next(iter(batch.values()))
        # static int8 clips activations outside the calibrated range: a rare sample may be off
        # by more than dynamic int8, but the typical error must stay small
        worst = {
            "onnx-fp32": 1e-5,
            "onnx-fp16": 0.01,
            "onnx-int8": 0.1 if mode == "dynamic" else 0.2,
        }
        bound = worst[art.target] * peak
        np.testing.assert_allclose(produced, reference, atol=bound)
        assert np.abs(produced - reference).mean() <= 0.02 * peak
        assert report.quality.max_abs_error <= bound
        # golden pairs reproduce with the artifact's own tolerance
        for pair in art.golden.pairs:
            out = runner.run_native(
                {
                    k: np.frombuffer(v.raw(), v.dtype).reshape(v.shape)
                    for k, v in pair.inputs.items()
                }
            )
            want = pair.outputs["scores"]
            np.testing.assert_allclose(
                out["scores"],
                np.frombuffer(want.raw(), want.dtype).reshape(want.shape),
                atol=art.golden.atol,
                rtol=art.golden.rtol,
            )
    assert result.reports["onnx-int8"].details["quantization"] == mode


def test_onnx_unstructured_pruning_reports_sparsity(model_path, settings, tmp_path) -> None:
    result = compress(
        onnx_source(model_path),
        Recipe(targets=("onnx-fp32",), prune_sparsity=0.5),
        CompressionData(evaluation=two_input_data(32, seed=3)),
        tmp_path,
        settings=settings,
    )
    report = result.reports["onnx-fp32"]
    assert report.sparsity == pytest.approx(0.5, abs=0.02)
    assert report.quality.max_abs_error > 0  # pruning changed the function, and it was measured


def _registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry.from_settings(settings)


def _bad(settings: Settings, run) -> None:
    registry = _registry(settings)
    blobs = registry.store.blob_count()
    models = registry.list_models()
    run(registry)
    assert registry.store.blob_count() == blobs
    assert registry.list_models() == models


def test_bad_inputs_fail_clearly_and_leave_the_store_unchanged(
    model_path, settings, tmp_path
) -> None:
    good = CompressionData(evaluation=two_input_data(16, seed=4))
    source = onnx_source(model_path)

    def missing_name(registry: ModelRegistry) -> None:
        data = Dataset(inputs={"features": good.evaluation.inputs["features"]})
        with pytest.raises(DataMismatchError, match="token_ids"):
            compress_and_register(
                registry, "two", "1", source, Recipe(), CompressionData(data), settings=settings
            )

    def wrong_shape(registry: ModelRegistry) -> None:
        data = Dataset(inputs={**good.evaluation.inputs, "token_ids": np.zeros((16, 5), np.int64)})
        with pytest.raises(DataMismatchError, match=r"token_ids.*\[N, 4\]"):
            compress_and_register(
                registry, "two", "1", source, Recipe(), CompressionData(data), settings=settings
            )

    def finetune_onnx(registry: ModelRegistry) -> None:
        # (an ONNX source's tflite-* targets come from onnx2tf now: test_compress_onnx_to_tflite)
        with pytest.raises(UnsupportedStepError, match="torch model"):
            compress_and_register(
                registry,
                "two",
                "1",
                source,
                Recipe(targets=("onnx-fp32",), finetune_epochs=1),
                good,
                settings=settings,
            )

    def distill_onnx(registry: ModelRegistry) -> None:
        with pytest.raises(UnsupportedStepError, match="structured pruning and distillation"):
            compress_and_register(
                registry, "two", "1", source, Recipe(structured_ratio=0.5), good, settings=settings
            )

    for case in (missing_name, wrong_shape, finetune_onnx, distill_onnx):
        _bad(settings, case)


def test_files_that_are_not_models(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_file(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model_file(junk)
    text = tmp_path / "model.pt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"not an ONNX, TorchScript or torch\.export model"):
        load_model_file(text)
