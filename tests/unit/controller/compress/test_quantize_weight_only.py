"""Heavy operators no activation quantizer reaches get weight-only int8: convolutions inside If
branches (static mode's calibrator cannot see there; dynamic mode has no convolution kernel),
in either mode, and every convolution of a recurrent model in dynamic mode; a feed-forward
model's top-level convolutions are still static mode's (dynamic refuses, as before). The float
tail after the last heavy operator (outputs, fed-back states) is left float by static mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.controller.compress.int8_coverage import artifact_bytes, int8_coverage
from edgefleet.controller.compress.quantize import float_tail, has_op, name_nodes
from edgefleet.controller.compress.targets import batched_feeds, build_onnx_int8
from edgefleet.controller.compress.weight_only import quantize_weights_only
from edgefleet.controller.errors import Int8CoverageError
from support.onnx_session import cpu_session

RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(16, 3, 8, 8)).astype(np.float32)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(0, 0.2, shape).astype(np.float32), name)


def _branch(name: str, weight: str) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Conv", ["image", weight], [f"{name}_out"], pads=[1, 1, 1, 1])],
        name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
        initializer=[_weight(weight, 16, 3, 3, 3)],
    )  # fmt: skip


def gated_cnn(path: Path, opset: int = 17) -> Path:
    """Two 16x3x3x3 convolutions, one per If branch (the batch's mean picks one), then a
    sigmoid: no heavy operator at the top level."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
            helper.make_node("Greater", ["mean", "zero"], ["bright"]),
            helper.make_node(
                "If", ["bright"], ["features"],
                then_branch=_branch("then", "w_then"), else_branch=_branch("else", "w_else"),
            ),
            helper.make_node("Sigmoid", ["features"], ["y"]),
        ],
        "gated_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = cpu_session(str(path))
    return session.run(None, {"image": images})[0]


def _dequantize_axes(model: onnx.ModelProto) -> list[int | None]:
    axes = []
    for branch in (a.g for a in model.graph.node[2].attribute):
        for node in branch.node:
            if node.op_type == "DequantizeLinear":
                axes.append(next((a.i for a in node.attribute if a.name == "axis"), None))
    return axes


@pytest.mark.parametrize(("opset", "axes"), [(17, [0, 0]), (11, [None, None])])
def test_subgraph_convolutions_get_int8_weights(
    tmp_path: Path, opset: int, axes: list[int | None]
) -> None:
    """Per output channel where DequantizeLinear takes an axis (opset 13), per tensor below."""
    path = gated_cnn(tmp_path / "gated.onnx", opset)
    model = onnx.load(str(path))
    done = quantize_weights_only(model, subgraphs_only=True)
    assert [(d.op_type, d.weights, d.in_subgraph) for d in done] == [("Conv", 432, True)] * 2
    assert _dequantize_axes(model) == axes
    coverage = int8_coverage(model)
    assert coverage.quantized_ops == {"Conv": 2}
    assert (coverage.int8_weights, coverage.float_weights) == (864, 0)
    quantized = tmp_path / "quantized.onnx"
    onnx.save(model, str(quantized))
    for images in (IMAGES, -IMAGES):  # both branches
        want, got = _run(path, images), _run(quantized, images)
        assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()


def test_a_weight_read_as_something_else_stays_float(tmp_path: Path) -> None:
    path = gated_cnn(tmp_path / "gated.onnx")
    model = onnx.load(str(path))
    branch = model.graph.node[2].attribute[0].g
    branch.node.append(helper.make_node("Shape", ["w_then"], ["w_shape"]))
    done = quantize_weights_only(model, subgraphs_only=True)
    assert [d.node for d in done] == ["else_out"]  # the then-branch weight is also a value
    assert int8_coverage(model).float_weights == 432


def test_static_int8_reaches_convolutions_inside_branches(tmp_path: Path) -> None:
    """Static QDQ does not enter If branches; their convolutions used to stay float (refused,
    'static quantization does not enter If/Loop/Scan subgraphs')."""
    path = gated_cnn(tmp_path / "gated.onnx")
    feeds = batched_feeds({"image": IMAGES}, batch=8)
    built = build_onnx_int8(
        path, tmp_path, "static", per_channel=True, opset=17, calibration=feeds, check=feeds
    )
    assert built.details["int8_heavy_ops"] == {"Conv": 2}
    assert built.details["int8_weight_share"] == 1.0
    for images in (IMAGES, -IMAGES):
        want, got = _run(path, images), _run(built.path, images)
        assert np.abs(got - want).max() <= 0.01


def test_dynamic_int8_reaches_convolutions_inside_branches(tmp_path: Path) -> None:
    path = gated_cnn(tmp_path / "gated.onnx")
    feeds = batched_feeds({"image": IMAGES}, batch=8)
    built = build_onnx_int8(
        path, tmp_path, "dynamic", per_channel=False, opset=17, calibration=None, check=feeds
    )
    assert built.details["int8_heavy_ops"] == {"Conv": 2}
    stored = artifact_bytes(onnx.load(str(built.path)))
    assert "float heavy weights" not in stored
    assert stored["int8 weights"] >= 864


def conv_lstm(path: Path) -> Path:
    """A Conv1d front end (32x8x3 weights) feeding an LSTM (hidden 16) at the top level."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["audio", "w_conv"], ["feat"], pads=[1, 1]),
            helper.make_node("Transpose", ["feat"], ["steps"], perm=[2, 0, 1]),
            helper.make_node("LSTM", ["steps", "w_ih", "w_hh"], ["h"], hidden_size=16),
            helper.make_node("ReduceMean", ["h"], ["y"], axes=[0, 1], keepdims=0),
        ],
        "conv_lstm",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", 8, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [_weight("w_conv", 32, 8, 3), _weight("w_ih", 1, 64, 32), _weight("w_hh", 1, 64, 16)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_dynamic_int8_of_a_recurrent_model_takes_its_convolutions_too(tmp_path: Path) -> None:
    """Static activations break recurrent models, so auto mode quantizes them dynamically; their
    convolutions get weight-only int8 there instead of staying float (and, with weights counted
    once, most of the model)."""
    path = conv_lstm(tmp_path / "conv_lstm.onnx")
    audio = RNG.normal(size=(8, 8, 10)).astype(np.float32)
    built = build_onnx_int8(
        path, tmp_path, "dynamic", per_channel=False, opset=17,
        calibration=None, check=batched_feeds({"audio": audio}),
    )  # fmt: skip
    assert built.details["int8_heavy_ops"] == {"Conv": 1, "LSTM": 1}
    assert built.details["int8_weight_share"] == 1.0
    session = cpu_session(str(built.path))
    reference = cpu_session(str(path))
    got, want = session.run(None, {"audio": audio})[0], reference.run(None, {"audio": audio})[0]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_dynamic_int8_of_a_feed_forward_cnn_is_still_refused(tmp_path: Path) -> None:
    """Top-level convolutions of a feed-forward model are static mode's."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1])],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [_weight("w", 16, 3, 3, 3)],
    )
    path = tmp_path / "cnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(Int8CoverageError, match="--int8-mode static"):
        build_onnx_int8(
            path, tmp_path, "dynamic", per_channel=False, opset=17, calibration=None,
            check=batched_feeds({"image": IMAGES}),
        )  # fmt: skip


def test_the_float_tail_is_what_follows_the_last_heavy_operator(tmp_path: Path) -> None:
    """The output's Sigmoid and a state computed past the recurrent cell are the tail; a
    residual Add that feeds a later convolution is not."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1]),
            helper.make_node("Add", ["c1", "x"], ["res"], name="residual"),
            helper.make_node("Conv", ["res", "w2"], ["c2"], pads=[1, 1]),
            helper.make_node("Sigmoid", ["c2"], ["y"], name="out_sigmoid"),
            helper.make_node("Add", ["state", "c2"], ["mixed"], name="state_mix"),
            helper.make_node("Tanh", ["mixed"], ["state_next"], name="state_tanh"),
        ],
        "tail",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", 4, 6]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6]),
            helper.make_tensor_value_info("state_next", TensorProto.FLOAT, ["N", 4, 6]),
        ],
        [_weight("w1", 4, 4, 3), _weight("w2", 4, 4, 3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    name_nodes(model)
    assert float_tail(model) == ["out_sigmoid", "state_mix", "state_tanh"]
    assert [n.name for n in model.graph.node][:3] == ["Conv_0", "residual", "Conv_2"]
    path = tmp_path / "tail.onnx"
    onnx.save(model, str(path))
    assert has_op(path, {"Conv"})
    assert has_op(gated_cnn(tmp_path / "gated.onnx"), {"Conv"})  # inside the If too


def test_the_bytes_of_an_artifact_are_accounted_for(tmp_path: Path) -> None:
    path = gated_cnn(tmp_path / "gated.onnx")
    model = onnx.load(str(path))
    quantize_weights_only(model, subgraphs_only=True)
    found = artifact_bytes(model)
    assert sum(found.values()) == model.ByteSize()
    assert found["int8 weights"] >= 864
    assert found["per-channel scales"] >= 2 * 16 * 4
    assert "float heavy weights" not in found
    assert artifact_bytes(onnx.load(str(path)))["float heavy weights"] >= 864 * 4
