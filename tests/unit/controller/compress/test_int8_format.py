"""Static int8 format: both QDQ and QOperator are built from one calibration and the smaller is
kept unless it is worse on the check calls; a QOperator file that does not run here, was left
with a dynamic integer kernel or computes worse is never kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgefleet.controller.compress.int8_coverage import int8_coverage
from edgefleet.controller.compress.int8_format import (
    FormatQuality,
    choose_static_format,
    no_worse,
    static_kernels_left,
)
from edgefleet.controller.compress.quantize import Feed, QuantFormatName, quantize_onnx_static
from edgefleet.controller.compress.targets import batched_feeds, build_onnx_int8
from support.onnx_session import cpu_session

RNG = np.random.default_rng(0)
IMAGES = RNG.random((96, 3, 12, 12), dtype=np.float32)


def residual_cnn(path: Path) -> Path:
    """Conv -> Relu -> Conv -> Add (residual) -> Relu -> GlobalAveragePool -> Flatten -> Gemm,
    opset 17, dynamic batch: every operator QOperator format has an integer kernel for."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(a.astype(np.float32), name)
        for name, a in (
            ("w1", rng.normal(0, 0.3, (8, 3, 3, 3))),
            ("b1", rng.normal(0, 0.1, 8)),
            ("w2", rng.normal(0, 0.2, (8, 8, 3, 3))),
            ("b2", rng.normal(0, 0.1, 8)),
            ("fc_w", rng.normal(0, 0.3, (10, 8))),
            ("fc_b", rng.normal(0, 0.1, 10)),
        )
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = cpu_session(str(path))
    return np.asarray(session.run(None, {"image": x})[0])


def _feeds(x: np.ndarray) -> list[Feed]:
    return batched_feeds({"image": x})


@pytest.fixture(scope="module")
def candidates(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[QuantFormatName, Path]]:
    work = tmp_path_factory.mktemp("formats")
    source = residual_cnn(work / "cnn.onnx")
    built = quantize_onnx_static(source, work, _feeds(IMAGES[:64]), per_channel=True)
    return source, built


def test_static_int8_keeps_the_smaller_qoperator_file_with_per_channel_kernels(
    tmp_path: Path,
) -> None:
    source = residual_cnn(tmp_path / "cnn.onnx")
    built = build_onnx_int8(
        source, tmp_path, "static", per_channel=True, opset=17,
        calibration=_feeds(IMAGES[:64]), check=_feeds(IMAGES[64:]),
    )  # fmt: skip
    details = built.details
    assert details["quant_format"] == "QOperator"
    assert details["activation_type"] == "uint8"
    choice = details["quant_format_choice"]
    assert choice["QOperator"]["bytes"] == built.path.stat().st_size
    assert choice["QOperator"]["bytes"] < choice["QDQ"]["bytes"]
    assert "bytes smaller, quality no worse on 32 samples" in choice["reason"]
    model = onnx.load(str(built.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QLinearConv") == 2
    assert {"QLinearAdd", "QGemm"} <= set(ops)
    assert static_kernels_left(built.path) == []
    # the graph's input quantized once, its output dequantized once: no pairs in between
    assert (ops.count("QuantizeLinear"), ops.count("DequantizeLinear")) == (1, 1)
    stored = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QLinearConv", "QGemm"):
            weight, scale = stored[node.input[3]], stored[node.input[4]]
            assert weight.data_type == TensorProto.INT8
            # per channel: one scale per output channel (QLinearConv) or column (QGemm)
            assert list(scale.dims) == [weight.dims[0]], node.op_type
            assert np.unique(numpy_helper.to_array(scale)).size == weight.dims[0]
    coverage = int8_coverage(model)
    assert coverage.quantized_ops == {"Conv": 2, "Gemm": 1}
    assert coverage.weight_share == 1.0
    want, got = _run(source, IMAGES), _run(built.path, IMAGES)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.9


def test_both_formats_come_from_one_calibration_and_compute_alike(
    candidates: tuple[Path, dict[QuantFormatName, Path]],
) -> None:
    source, built = candidates
    assert set(built) == {"QDQ", "QOperator"}
    qdq, qop = (_run(built[name], IMAGES) for name in ("QDQ", "QOperator"))
    # the same ranges give the same scales: the formats differ by rounding only
    assert np.abs(qop - qdq).max() <= 0.02 * np.abs(_run(source, IMAGES)).max()


def test_a_qoperator_file_that_does_not_run_is_never_kept(
    candidates: tuple[Path, dict[QuantFormatName, Path]], tmp_path: Path
) -> None:
    source, built = candidates
    model = onnx.load(str(built["QOperator"]))
    node = next(n for n in model.graph.node if n.op_type == "QLinearConv")
    node.domain = "com.example.missing"
    model.opset_import.append(helper.make_opsetid("com.example.missing", 1))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    choice = choose_static_format(
        source, {"QDQ": built["QDQ"], "QOperator": broken}, _feeds(IMAGES[64:])
    )
    assert choice.kept == "QDQ"
    assert choice.reason.startswith("QOperator does not run: ")
    assert "com.example.missing" in choice.reason
    assert choice.as_details()["quant_format"] == "QDQ"
    assert choice.as_details()["activation_type"] == "int8"


def test_a_static_pass_left_with_a_dynamic_kernel_is_refused(
    candidates: tuple[Path, dict[QuantFormatName, Path]], tmp_path: Path
) -> None:
    source, built = candidates
    dynamic = tmp_path / "conv-integer.onnx"
    quantize_dynamic(source, dynamic, op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
    assert static_kernels_left(dynamic) == ["ConvInteger"]
    assert static_kernels_left(built["QOperator"]) == []
    choice = choose_static_format(
        source, dict(built), _feeds(IMAGES[64:]),
        refused={"QOperator": "static quantization left ConvInteger"},
    )  # fmt: skip
    assert choice.kept == "QDQ"
    assert choice.reason == "QOperator static quantization left ConvInteger"


def test_a_smaller_qoperator_file_that_computes_worse_is_not_kept(
    candidates: tuple[Path, dict[QuantFormatName, Path]], tmp_path: Path
) -> None:
    source, built = candidates
    model = onnx.load(str(built["QOperator"]))
    conv = next(n for n in model.graph.node if n.op_type == "QLinearConv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[3])
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    worse = tmp_path / "worse.onnx"
    onnx.save(model, str(worse))
    assert worse.stat().st_size < built["QDQ"].stat().st_size
    choice = choose_static_format(
        source, {"QDQ": built["QDQ"], "QOperator": worse}, _feeds(IMAGES[64:])
    )
    assert choice.kept == "QDQ"
    assert choice.reason.startswith("QOperator is smaller but worse: ")
    figures = choice.as_details()["quant_format_choice"]
    assert figures["QOperator"]["mean_rel_error"] > 2 * figures["QDQ"]["mean_rel_error"]


def _quality(top1: float | None, mean: float, worst: float, share: float = 1.0) -> FormatQuality:
    return FormatQuality(
        size_bytes=1000, max_rel_error=worst, mean_rel_error=mean, top1_agreement=top1,
        samples=64, int8_weight_share=share,
    )  # fmt: skip


def test_no_worse_allows_one_sample_and_a_quarter_more_error() -> None:
    baseline = _quality(0.96875, 0.02, 0.5)
    assert no_worse(_quality(0.96875 - 1 / 64, 0.024, 0.6), baseline) is None
    assert no_worse(_quality(0.96875 - 2 / 64, 0.02, 0.5), baseline) == (
        "top-1 agreement 0.9375 against 0.9688"
    )
    assert no_worse(_quality(0.96875, 0.03, 0.5), baseline) == (
        "mean rel error 0.03000 against 0.02000"
    )
    assert no_worse(_quality(0.96875, 0.02, 0.7), baseline) == (
        "max rel error 0.70000 against 0.50000"
    )
    assert no_worse(_quality(0.96875, 0.02, 0.5, share=0.9), baseline) == (
        "int8 weight share 0.9000 against 1.0000"
    )
    # errors near zero: a floor of 0.2 % of the fp32 peak, not a ratio of almost nothing
    assert no_worse(_quality(None, 0.0015, 0.001), _quality(None, 0.0, 0.0)) is None


def test_qdq_is_kept_when_qoperator_is_not_smaller(
    candidates: tuple[Path, dict[QuantFormatName, Path]], tmp_path: Path
) -> None:
    source, built = candidates
    same = tmp_path / "qdq-copy.onnx"
    shutil.copy(built["QDQ"], same)
    choice = choose_static_format(source, {"QDQ": built["QDQ"], "QOperator": same}, _feeds(IMAGES))
    assert (choice.kept, choice.reason) == ("QDQ", "QOperator is not smaller")
