"""edgefleet.controller.compress.compact: smaller files, same signature, same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.controller.compress.compact import compact_file, compact_model


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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
