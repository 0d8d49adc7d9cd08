"""tflite-int8 from a float .tflite is refused when ai-edge-quantizer would leave most heavy
weights float: a real file (a 3-D convolution of 3,456 weights, which its dynamic recipe does not
quantize, and a 128-weight dense head, which it does) converted with litert-torch, quantized for
real; the refusal names what stayed float, and nothing is registered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgefleet.controller.compress import CompressionData, Dataset, Recipe, compress_and_register
from edgefleet.controller.compress.convert import export_tflite_fp32
from edgefleet.controller.compress.sources import tflite_source
from edgefleet.controller.compress.tflite_quantize import quantize_tflite, tflite_int8_coverage
from edgefleet.controller.config import get_settings
from edgefleet.controller.errors import Int8CoverageError
from edgefleet.controller.registry import ModelRegistry

CONV3D_WEIGHTS = 32 * 4 * 3 * 3 * 3  # out x in x kernel
HEAD_WEIGHTS = 32 * 4


class VolumeNet(nn.Module):
    """A 3-D convolution over a [1, 4, 8, 8, 8] volume and a small dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(4, 32, 3, padding=1)
        self.head = nn.Linear(32, 4)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(volume)).mean(dim=(2, 3, 4)))


def _volumes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4, 8, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def volume_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tflite") / "volume.tflite"
    return export_tflite_fp32(VolumeNet(), ("volume",), {"volume": _volumes(1, 0)}, path)


def test_the_float_file_holds_float_heavy_weights(volume_tflite: Path) -> None:
    coverage = tflite_int8_coverage(volume_tflite)
    assert coverage.heavy_ops == {"CONV_3D": 1, "FULLY_CONNECTED": 1}
    assert coverage.quantized_ops == {}
    assert coverage.float_ops == {"CONV_3D": 1, "FULLY_CONNECTED": 1}
    assert (coverage.int8_weights, coverage.float_weights) == (0, CONV3D_WEIGHTS + HEAD_WEIGHTS)


def test_dynamic_int8_that_leaves_the_3d_convolution_float_is_refused(
    volume_tflite: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "volume-int8.tflite"
    with pytest.raises(Int8CoverageError) as caught:
        quantize_tflite(volume_tflite, dst, "tflite-int8", "dynamic", min_share=0.5)
    error = caught.value
    assert error.target == "tflite-int8"
    assert error.mode == "dynamic-range"
    assert error.heavy_ops == {"CONV_3D": 1, "FULLY_CONNECTED": 1}
    assert error.quantized_ops == {"FULLY_CONNECTED": 1}  # the head did get int8 weights
    assert error.weight_share == pytest.approx(HEAD_WEIGHTS / (CONV3D_WEIGHTS + HEAD_WEIGHTS))
    text = str(error)
    assert f"left CONV_3D x1 float ({CONV3D_WEIGHTS:,} weight values)" in text
    assert "FULLY_CONNECTED" in text.split("its recipe quantizes", 1)[1]  # what it would take
    assert "CONV_3D" not in text.split("its recipe quantizes", 1)[1]
    assert "3.6% of their weight values" in text
    assert "at least 50%" in text
    # the quantizer's output really kept the convolution float: the figure is measured
    left = tflite_int8_coverage(dst)
    assert left.float_ops == {"CONV_3D": 1}
    assert (left.int8_weights, left.float_weights) == (HEAD_WEIGHTS, CONV3D_WEIGHTS)


def test_the_share_decides_not_the_presence_of_int8(volume_tflite: Path, tmp_path: Path) -> None:
    """With a bar below the 3.6 % the head holds, the same file passes, its float part shown."""
    details = quantize_tflite(
        volume_tflite, tmp_path / "volume-int8.tflite", "tflite-int8", "dynamic", min_share=0.03
    )
    assert details["int8_heavy_ops"] == {"FULLY_CONNECTED": 1}
    assert details["float_heavy_weights"] == CONV3D_WEIGHTS
    assert details["int8_weight_share"] == pytest.approx(0.0357, abs=1e-4)


def test_the_pipeline_registers_nothing_when_tflite_int8_is_refused(
    volume_tflite: Path, tmp_path: Path
) -> None:
    settings = get_settings(data_dir=tmp_path / "data", latency_runs=5)
    registry = ModelRegistry.from_settings(settings)
    with pytest.raises(Int8CoverageError, match="left CONV_3D x1 float"):
        compress_and_register(
            registry,
            "volume",
            "1",
            tflite_source(volume_tflite),
            Recipe(targets=("tflite-fp32", "tflite-int8")),
            CompressionData(evaluation=Dataset(inputs={"volume": _volumes(4, 1)})),
            settings=settings,
        )
    assert not registry.has_version("volume", "1")
