"""edgefleet.controller.compress.compact: smaller files, same signature, the same numbers: zero
points and bias scales a runtime infers are not stored, defaults not written, a tensor several
subgraphs hold stored once, the most used names the shortest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.controller.compress.compact import compact_file, compact_model
from support.onnx_session import cpu_session


def _model_with_subgraph(output_name: str = "y") -> onnx.ModelProto:
    """x -> MatMul(w) -> a long-named tensor; an If whose branches use it from the outer scope
    (one adds a constant, the other negates it); ``t0`` is the name of the second input."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(
        rng.standard_normal((4, 4)).astype(np.float32), "a_very_long_quantizer_derived_weight"
    )
    bias = numpy_helper.from_array(np.ones(4, np.float32), "then_branch_bias_constant")
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["hidden_activation_output", "then_branch_bias_constant"],
                          ["then_out"], name="then_add_node_with_a_name")],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [None, 4])],
        initializer=[bias],
    )  # fmt: skip
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["hidden_activation_output"], ["else_out"])],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [None, 4])],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node(
                "MatMul",
                ["x", "a_very_long_quantizer_derived_weight"],
                ["hidden_activation_output"],
                name="matmul_with_a_long_name",
            ),
            helper.make_node(
                "If",
                ["t0"],
                [output_name],
                then_branch=then_branch,
                else_branch=else_branch,
                name="branch",
            ),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("t0", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 4])],
        initializer=[weight],
        value_info=[
            helper.make_tensor_value_info("hidden_activation_output", TensorProto.FLOAT, [None, 4])
        ],
        doc_string="a graph documented at length " * 20,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path, flag: bool) -> np.ndarray:
    session = cpu_session(str(path))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    return session.run(None, {"x": x, "t0": np.array(flag)})[0]


def test_a_compacted_model_is_smaller_and_computes_the_same(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model_with_subgraph(), str(path))
    before = {flag: _run(path, flag) for flag in (True, False)}
    saved = compact_file(path)
    assert saved > 0
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x", "t0"]
    assert [o.name for o in model.graph.output] == ["y"]
    assert not model.graph.value_info
    assert all(not node.name for node in model.graph.node)
    assert "a_very_long_quantizer_derived_weight" not in str(model)
    for flag in (True, False):
        np.testing.assert_array_equal(_run(path, flag), before[flag])


def test_short_names_never_collide_with_the_graphs_own_names() -> None:
    model = compact_model(_model_with_subgraph(output_name="t1"))
    internal = [n.output[0] for n in model.graph.node]
    assert internal[-1] == "t1"  # the graph output keeps its name
    assert internal[0] not in {"x", "t0", "t1"}


# --- a statically quantized convolution: what compaction drops and derives ------------------


def _conv_net(path: Path) -> Path:
    """Conv(3->8, bias, stride 1, default attributes written out) -> Relu -> Conv(8->8, stride
    2) -> output, opset 17: what an exporter writes and a QDQ quantizer then annotates."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2"),
    ]
    defaults = {"dilations": [1, 1], "group": 1, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], strides=[1, 1], **defaults),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], strides=[2, 2], **defaults),
        ],
        "conv_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


IMAGES = np.random.default_rng(2).normal(size=(8, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def qdq_conv(tmp_path: Path) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgefleet.controller.compress.quantize import FeedReader

    dst = tmp_path / "qdq.onnx"
    quantize_static(
        str(_conv_net(tmp_path / "conv.onnx")), str(dst),
        FeedReader([{"image": IMAGES[i : i + 2]} for i in range(0, 8, 2)]),
        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )  # fmt: skip
    return dst


def _outputs(path: Path, optimize: bool = True) -> np.ndarray:
    return cpu_session(path, optimize=optimize).run(None, {"image": IMAGES})[0]


def _fused_ops(path: Path, tmp_path: Path) -> list[str]:
    """The operators onnxruntime runs after its own optimisation (QDQ groups fused)."""
    cpu_session(path, optimized_path=tmp_path / "optimized.onnx")
    return sorted(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_a_compacted_qdq_model_computes_the_same_numbers(qdq_conv: Path, tmp_path: Path) -> None:
    compacted = tmp_path / "compacted.onnx"
    compacted.write_bytes(qdq_conv.read_bytes())
    fused_before = _fused_ops(qdq_conv, tmp_path)
    assert compact_file(compacted) > 0
    onnx.checker.check_model(onnx.load(str(compacted)), full_check=True)
    for optimize in (True, False):  # as written and as onnxruntime rewrites it
        np.testing.assert_array_equal(_outputs(compacted, optimize), _outputs(qdq_conv, optimize))
    assert _fused_ops(compacted, tmp_path) == fused_before  # the same kernels run


def test_stored_zero_points_and_bias_scales_are_not_stored(qdq_conv: Path) -> None:
    before = onnx.load(str(qdq_conv))
    model = compact_model(onnx.load(str(qdq_conv)))
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = [n for n in dequantize if n.input[0] in stored and stored[n.input[0]].ndim == 4]
    biases = [
        n for n in dequantize if n.input[0] in stored and stored[n.input[0]].dtype == np.int32
    ]
    assert len(weights) == len(biases) == 2
    # int32 biases: a missing zero point reads as 0
    assert all(len(n.input) == 2 for n in biases)
    # per-channel int8 weights keep theirs, all zeros: onnxruntime's exact-int8 mode on x86
    # without VNNI fails on a per-axis DequantizeLinear without one
    assert all(len(n.input) == 3 and not stored[n.input[2]].any() for n in weights)
    assert [stored[n.input[2]].shape for n in weights] == [(8,), (8,)]
    # activations keep theirs: a QuantizeLinear without one would produce uint8
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize
    assert all(len(n.input) == 3 for n in quantize)
    # a bias scale is x_scale * w_scale, computed by a Mul rather than stored
    for bias, conv in zip(
        biases, [n for n in model.graph.node if n.op_type == "Conv"], strict=True
    ):
        mul = producers[bias.input[1]]
        assert mul.op_type == "Mul"
        x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert list(mul.input) == [x_dq.input[1], w_dq.input[1]]
    per_channel_floats = [a for a in stored.values() if a.dtype == np.float32 and a.size == 8]
    assert len(per_channel_floats) == 2  # the two weight scales; the bias scales are gone
    assert len(model.graph.initializer) < len(before.graph.initializer)


def test_attributes_at_their_defaults_are_dropped(qdq_conv: Path) -> None:
    model = compact_model(onnx.load(str(qdq_conv)))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    attributes = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    # dilations 1, group 1 and kernel_shape (read from the weight) dropped; pads and the
    # second convolution's strides are not defaults
    assert attributes == [{"pads": [1, 1, 1, 1]}, {"pads": [1, 1, 1, 1], "strides": [2, 2]}]


def test_the_most_used_names_are_the_shortest(qdq_conv: Path) -> None:
    model = compact_model(onnx.load(str(qdq_conv)))
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            uses[name] = uses.get(name, 0) + 1
    internal = {n: k for n, k in uses.items() if n not in {"image", "y"}}
    assert all(name.isidentifier() for name in internal)
    by_use = sorted(internal, key=lambda n: -internal[n])
    assert len(by_use[0]) == 1
    assert max(len(n) for n in internal) <= 2  # a few dozen values: one or two characters


# --- subgraphs: shadowing, duplicates across branches, Constant nodes ------------------------


def _branches_with_shared_weights() -> onnx.ModelProto:
    """An If whose two branches each hold the same 16x16 matrix as their own initializer (as a
    quantizer leaves a weight both branches read), one as a Constant node; the else branch reads
    an outer value."""
    weight = np.random.default_rng(3).normal(size=(16, 16)).astype(np.float32)
    then_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_then"], ["then_hidden"]),
            helper.make_node("Relu", ["then_hidden"], ["then_out"]),
        ],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [None, 16])],
        initializer=[numpy_helper.from_array(weight, "w_then")],
    )  # fmt: skip
    else_branch = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["w_else"], value=numpy_helper.from_array(weight, "w_else")
            ),
            helper.make_node("MatMul", ["hidden", "w_else"], ["else_out"]),
        ],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [None, 16])],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["hidden"]),
            helper.make_node(
                "If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch
            ),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_branches(model: onnx.ModelProto) -> dict[bool, np.ndarray]:
    session = cpu_session(model.SerializeToString())
    x = np.random.default_rng(4).normal(size=(3, 16)).astype(np.float32)
    return {flag: session.run(None, {"x": x, "flag": np.array(flag)})[0] for flag in (True, False)}


def test_a_tensor_both_branches_hold_is_stored_once_in_the_graph_enclosing_them() -> None:
    model = _branches_with_shared_weights()
    before = _run_branches(model)
    compact_model(model)
    onnx.checker.check_model(model, full_check=True)
    branches = [a.g for a in model.graph.node[-1].attribute]
    assert [len(b.initializer) for b in branches] == [0, 0]
    assert not [n for b in branches for n in b.node if n.op_type == "Constant"]
    assert [tuple(t.dims) for t in model.graph.initializer] == [(16, 16)]
    after = _run_branches(model)
    for flag in (True, False):
        np.testing.assert_array_equal(after[flag], before[flag])
    assert not np.array_equal(after[True], after[False])
