"""onnx-int8 from real pretrained models nobody here trained (tests/support/pretrained.py): an
opset-11 PaddleOCR classifier upgraded and quantized per channel, the opset-12 PaddleOCR
detector refused in dynamic mode (it has no MatMul), and the stateful Silero VAD (If subgraphs,
LSTM, an int64 scalar input) quantized from feeds (test_compress_stateful.py compresses it from
a sequence data file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import (
    CompressionData,
    Dataset,
    Recipe,
    compress,
    compress_and_register,
    onnx_source,
)
from edgefleet.controller.compress.int8_coverage import int8_coverage
from edgefleet.controller.compress.opset import ai_onnx_opset
from edgefleet.controller.compress.quantize import choose_int8_mode
from edgefleet.controller.compress.targets import build_onnx_int8
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.errors import (
    DataMismatchError,
    Int8CoverageError,
    QuantizationBlockedError,
)
from edgefleet.controller.registry import ModelRegistry
from support.onnx_session import cpu_session
from support.pretrained import pretrained_model


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return get_settings(data_dir=tmp_path_factory.mktemp("data"), latency_runs=5)


def _images(n: int, height: int, width: int, seed: int) -> Dataset:
    """Random RGB images in [0, 1), the range PaddleOCR's preprocessing produces before its
    normalisation (the models take normalised input, roughly [-1, 1])."""
    rng = np.random.default_rng(seed)
    return Dataset(inputs={"x": (rng.random((n, 3, height, width), dtype=np.float32) - 0.5) * 2})


def test_ppocr_cls_opset11_compresses_to_static_int8(settings: Settings, tmp_path: Path) -> None:
    """Before the upgrade this failed: per-channel QDQ wrote DequantizeLinear(axis) into an
    opset-11 graph ('Unrecognized attribute: axis for operator DequantizeLinear')."""
    path = pretrained_model("ppocr-cls")
    assert ai_onnx_opset(onnx.load(str(path))) == 11
    evaluation = _images(64, 48, 192, seed=1)
    result = compress(
        onnx_source(path),
        Recipe(targets=("onnx-int8",), onnx_int8_mode="static"),
        CompressionData(evaluation=evaluation, calibration=_images(32, 48, 192, seed=2)),
        tmp_path,
        settings=settings,
    )
    report = result.reports["onnx-int8"]
    details = report.details
    assert (details["source_opset"], details["opset"]) == (11, 17)
    upgrade = details["opset_upgrade"]
    assert (upgrade["from"], upgrade["to"], upgrade["checked_calls"]) == (11, 17, 2)
    assert upgrade["max_abs_diff"] <= 1e-6
    assert details["per_channel"] is True
    assert "per_channel_fallback" not in details
    assert details["heavy_ops"] == {"Conv": 53, "MatMul": 1}
    assert details["int8_heavy_ops"]["Conv"] == 53
    assert details["int8_weight_share"] == 1.0

    artifact = result.artifacts[0]
    assert report.size_ratio == pytest.approx(path.stat().st_size / artifact.file.stat().st_size)
    # QDQ's activation QuantizeLinear/DequantizeLinear pairs, their scalars and the bias scales
    # cost more than the 3.5x budget allows; QOperator's integer kernels store none of them
    assert details["quant_format"] == "QOperator"
    choice = details["quant_format_choice"]
    assert choice["QOperator"]["bytes"] == artifact.file.stat().st_size
    assert choice["QDQ"]["bytes"] - choice["QOperator"]["bytes"] > 10_000
    assert choice["QOperator"]["top1_agreement"] >= choice["QDQ"]["top1_agreement"] - 1 / 64
    # the quantizer's long names and shape notes (QOperator writes fewer nodes than QDQ's pairs)
    assert details["compacted_bytes"] > 60_000
    assert report.size_ratio > 3.5  # 124k weights: per-channel scales and int32 biases weigh here
    # the reported agreement is what the two models do on the evaluation images
    want = cpu_session(str(path)).run(None, evaluation.inputs)[0].argmax(axis=1)
    got = cpu_session(str(artifact.file)).run(None, evaluation.inputs)[0].argmax(axis=1)
    assert report.quality.top1_agreement == pytest.approx(float((want == got).mean()))
    assert report.quality.top1_agreement >= 0.85
    assert report.compare == "top1"
    assert artifact.signature.inputs[0].shape == (None, 3, None, None)  # dynamic H, W kept


def test_ppocr_det_dynamic_mode_is_refused(settings: Settings, tmp_path: Path) -> None:
    """Convolutions only: dynamic mode used to register a byte-for-byte fp32 copy (1.00x)."""
    path = pretrained_model("ppocr-det")
    registry = ModelRegistry.from_settings(settings)
    with pytest.raises(Int8CoverageError) as caught:
        compress_and_register(
            registry,
            "ppocr-det",
            "1",
            onnx_source(path),
            Recipe(targets=("onnx-int8",), onnx_int8_mode="dynamic"),
            CompressionData(evaluation=_images(4, 64, 64, seed=3)),
            settings=settings,
        )
    error = caught.value
    assert (error.mode, error.heavy_ops) == ("dynamic", {"Conv": 62, "ConvTranspose": 2})
    assert error.quantized_ops == {}
    assert error.weight_share == 0.0
    assert "dynamic quantization put int8 weights on none" in str(error)
    assert "Conv x62, ConvTranspose x2" in str(error)
    assert not registry.has_version("ppocr-det", "1")


def test_ppocr_det_image_size_it_cannot_take_is_named(settings: Settings, tmp_path: Path) -> None:
    """DBNet needs sides divisible by 32; 48x192 fails inside the graph, at a named node."""
    with pytest.raises(DataMismatchError) as caught:
        compress(
            onnx_source(pretrained_model("ppocr-det")),
            Recipe(targets=("onnx-fp32",)),
            CompressionData(evaluation=_images(2, 48, 192, seed=6)),
            tmp_path,
            settings=settings,
        )
    text = str(caught.value)
    assert text.startswith("the model rejects the evaluation data at node 'p2o.Add.")
    assert "(Add)" in text
    assert "[ONNXRuntimeError]" not in text
    assert "/onnxruntime_src/" not in text


def _vad_feeds(calls: int, sr: np.ndarray, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "input": rng.normal(0.0, 0.1, (2, 512)).astype(np.float32),
            "state": np.zeros((2, 2, 128), np.float32),
            "sr": sr,
        }
        for _ in range(calls)
    ]


def test_silero_vad_static_int8_covers_subgraph_lstms(tmp_path: Path) -> None:
    """Static QDQ reaches the top-level convolutions; the LSTMs inside the If branches get
    dynamic int8 weights; the scalar ``sr`` and the [2, N, 128] state pass through."""
    path = pretrained_model("silero-vad-op15")
    feeds = _vad_feeds(4, np.array(16000, np.int64), seed=4)
    built = build_onnx_int8(
        path, tmp_path, "static", per_channel=True, opset=17, calibration=feeds, check=feeds[:1]
    )
    details = built.details
    assert details["opset"] == 15
    assert "opset_upgrade" not in details
    assert details["heavy_ops"] == {"Conv": 6, "LSTM": 2}
    assert details["int8_heavy_ops"] == {"Conv": 6, "LSTM": 2}
    assert details["dynamic_int8_nodes"]["count"] == 2
    assert int8_coverage(onnx.load(str(built.path))).weight_share == 1.0
    ratio = path.stat().st_size / built.path.stat().st_size
    assert ratio > 2.0
    session = cpu_session(str(built.path))
    probability, state = session.run(None, feeds[0])
    assert probability.shape == (2, 1)
    assert state.shape == (2, 2, 128)


def test_silero_vad_scalar_input_given_batched_is_named(tmp_path: Path) -> None:
    """``sr`` batched like the other inputs (what a data file without a layout holds) is refused
    with its name, not an onnxruntime traceback."""
    path = pretrained_model("silero-vad-op15")
    feeds = _vad_feeds(2, np.array([16000, 16000], np.int64), seed=5)
    with pytest.raises(QuantizationBlockedError) as caught:
        build_onnx_int8(
            path, tmp_path, "static", per_channel=True, opset=17, calibration=feeds, check=feeds
        )
    assert caught.value.blocker == "input 'sr'"
    assert "[ONNXRuntimeError]" not in str(caught.value)


def test_auto_int8_mode_is_dynamic_for_a_recurrent_model_and_static_for_a_cnn() -> None:
    """With calibration data, ``auto`` quantizes a CNN statically but a recurrent model
    (its LSTM in the main graph or inside If branches) dynamically."""
    assert choose_int8_mode(pretrained_model("ppocr-cls"), "auto", True) == "static"
    assert choose_int8_mode(pretrained_model("silero-vad-op15"), "auto", True) == "dynamic"
    assert choose_int8_mode(pretrained_model("silero-vad"), "auto", True) == "dynamic"
    assert choose_int8_mode(pretrained_model("silero-vad"), "static", True) == "static"
