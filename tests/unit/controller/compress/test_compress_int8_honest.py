"""Honest int8: an onnx-int8 artifact holds int8 weights for the model's heavy operators or is
refused, with counts; subgraphs and several inputs compress; failures name the node or input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.controller.compress import CompressionData, Dataset, Recipe, compress, onnx_source
from edgefleet.controller.compress.int8_coverage import int8_coverage
from edgefleet.controller.compress.quantize import ort_session, run_feed
from edgefleet.controller.compress.targets import batched_feeds, build_onnx_int8
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.errors import Int8CoverageError, QuantizationBlockedError

RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(0, 0.2, shape).astype(np.float32), name)


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_matmul(path: Path) -> Path:
    """Two convolutions (4,608 weights) and a small MatMul head (160 weights)."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c2"], ["pool"], name="pool"),
            helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
            helper.make_node("MatMul", ["flat", "head"], ["logits"], name="head"),
        ],
        "conv_matmul",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [_weight("w1", 16, 3, 3, 3), _weight("w2", 16, 16, 3, 3), _weight("head", 16, 10)],
    )
    return _save(graph, path)


def gated_mlp(path: Path) -> Path:
    """Two inputs (float features of 64 with a dynamic batch, an int64 switch per sample) and
    an If whose branches each hold a MatMul: the largest switch in the batch picks one."""
    branches = {}
    for name, weight in (("then", "w_then"), ("else", "w_else")):
        branches[name] = helper.make_graph(
            [helper.make_node("MatMul", ["features", weight], [f"{name}_out"], name=f"{name}_mm")],
            f"{name}_branch",
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", 128])],
        )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["switch"], ["top"], name="reduce", keepdims=0),
            helper.make_node("Greater", ["top", "zero"], ["cond"], name="greater"),
            helper.make_node(
                "If",
                ["cond"],
                ["hidden"],
                name="gate",
                then_branch=branches["then"],
                else_branch=branches["else"],
            ),
            helper.make_node("Relu", ["hidden"], ["scores"], name="relu"),
        ],
        "gated_mlp",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64]),
            helper.make_tensor_value_info("switch", TensorProto.INT64, ["N", 1]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 128])],
        [
            _weight("w_then", 64, 128),
            _weight("w_else", 64, 128),
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
        ],
    )
    return _save(graph, path)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return get_settings(data_dir=tmp_path_factory.mktemp("data"), latency_runs=5)


def test_dynamic_mode_on_a_convolutional_model_is_refused(tmp_path: Path) -> None:
    """Dynamic mode quantizes the 160-weight head only: a float copy under an int8 name."""
    path = conv_matmul(tmp_path / "cnn.onnx")
    feeds = batched_feeds({"image": _images(16, 1)})
    with pytest.raises(Int8CoverageError) as caught:
        build_onnx_int8(
            path, tmp_path, "dynamic", per_channel=False, opset=17, calibration=None, check=feeds
        )
    error = caught.value
    assert error.mode == "dynamic"
    assert error.heavy_ops == {"Conv": 2, "MatMul": 1}
    assert error.quantized_ops == {"MatMul": 1}
    assert error.weight_share == pytest.approx(160 / (160 + 16 * 27 + 16 * 144))
    text = str(error)
    assert "dynamic quantization" in text
    assert "Conv x2, MatMul x1" in text
    assert "--int8-mode static" in text
    assert "--calib" in text

    built = build_onnx_int8(
        path, tmp_path, "static", per_channel=True, opset=17, calibration=feeds, check=feeds
    )
    assert built.details["int8_heavy_ops"] == {"Conv": 2, "MatMul": 1}
    assert built.details["heavy_ops"] == {"Conv": 2, "MatMul": 1}
    assert built.details["int8_weight_share"] == 1.0


def test_a_model_without_heavy_operators_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "relu_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    path = _save(graph, tmp_path / "relu.onnx")
    feeds = [{"x": RNG.random((4, 4), dtype=np.float32)}]
    with pytest.raises(Int8CoverageError, match="no Conv, MatMul, Gemm or recurrent operator"):
        build_onnx_int8(
            path, tmp_path, "dynamic", per_channel=False, opset=17, calibration=None, check=feeds
        )


def test_coverage_counts_integer_kernels_and_qdq_weights(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from edgefleet.controller.compress.quantize import FeedReader

    path = conv_matmul(tmp_path / "cnn.onnx")
    float_coverage = int8_coverage(onnx.load(str(path)))
    assert float_coverage.quantized_ops == {}
    assert float_coverage.weight_share == 0.0
    assert float_coverage.heavy_ops == {"Conv": 2, "MatMul": 1}

    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(path, dynamic, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    coverage = int8_coverage(onnx.load(str(dynamic)))
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(dynamic)).graph.node)
    assert coverage.quantized_ops == {"MatMul": 1}
    assert (coverage.int8_weights, coverage.float_weights) == (160, 16 * 27 + 16 * 144)

    qoperator = tmp_path / "qoperator.onnx"
    quantize_static(
        path, qoperator, FeedReader(batched_feeds({"image": _images(8, 2)})),
        quant_format=QuantFormat.QOperator, weight_type=QuantType.QInt8,
    )  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(qoperator)).graph.node}
    assert "QLinearConv" in ops
    coverage = int8_coverage(onnx.load(str(qoperator)))
    assert coverage.quantized_ops["Conv"] == 2
    assert coverage.weight_share == 1.0


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_if_subgraphs_and_int64_input_compress(
    tmp_path: Path, settings: Settings, mode: str
) -> None:
    path = gated_mlp(tmp_path / "gated.onnx")
    rng = np.random.default_rng(5)

    def data(n: int) -> Dataset:
        return Dataset(
            inputs={
                "features": rng.normal(size=(n, 64)).astype(np.float32),
                "switch": rng.integers(0, 2, size=(n, 1)).astype(np.int64),
            }
        )

    result = compress(
        onnx_source(path),
        Recipe(targets=("onnx-int8",), onnx_int8_mode=mode, task="regression"),  # type: ignore[arg-type]
        CompressionData(evaluation=data(64), calibration=data(64)),
        tmp_path / "work",
        settings=settings,
    )
    report = result.reports["onnx-int8"]
    assert report.details["quantization"] == mode
    assert report.details["heavy_ops"] == {"MatMul": 2}
    # both branches' weights are int8, inside the If (dynamic int8 there, static has no reach)
    assert report.details["int8_heavy_ops"] == {"MatMul": 2}
    if mode == "static":
        assert report.details["dynamic_int8_nodes"]["count"] == 2
    artifact = result.artifacts[0]
    assert [s.dtype for s in artifact.signature.inputs] == ["float32", "int64"]
    assert artifact.signature.inputs[0].shape == (None, 64)
    assert report.size_ratio > 3.0
    assert report.quality.max_rel_error < 0.05


def test_a_node_that_fails_is_named(tmp_path: Path) -> None:
    """A Reshape that only fits some inputs, calibrated on ones it does not fit."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["rows"], name="to_rows"),
            helper.make_node("MatMul", ["rows", "w"], ["y"], name="mm"),
        ],
        "reshape_mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 8])],
        [numpy_helper.from_array(np.array([-1, 16], np.int64), "shape"), _weight("w", 16, 8)],
    )
    path = _save(graph, tmp_path / "reshape.onnx")
    good = [{"x": RNG.random((2, 16), dtype=np.float32)}]
    bad = [{"x": RNG.random((3, 5), dtype=np.float32)}]
    with pytest.raises(QuantizationBlockedError) as caught:
        build_onnx_int8(
            path, tmp_path, "static", per_channel=False, opset=17, calibration=bad, check=good
        )
    assert caught.value.blocker == "node 'to_rows' (Reshape)"
    text = str(caught.value)
    assert "[ONNXRuntimeError]" not in text
    assert "/onnxruntime_src/" not in text
    assert "Traceback" not in text
    assert "\n" not in text


def test_an_input_of_the_wrong_rank_is_named(tmp_path: Path) -> None:
    path = gated_mlp(tmp_path / "gated.onnx")
    session = ort_session(path)
    feed = {
        "features": RNG.random((4, 64), dtype=np.float32),
        "switch": np.ones(4, np.int64),  # [N] where the model takes [N, 1]
    }
    with pytest.raises(QuantizationBlockedError) as caught:
        run_feed(session, feed)
    assert caught.value.blocker == "input 'switch'"
    assert "rank 2" in str(caught.value)
    feed["switch"] = feed["switch"][:, None]
    assert run_feed(session, feed)[0].shape == (4, 128)
