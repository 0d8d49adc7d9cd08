"""edgefleet.agent.runtimes.onnx: outputs come back named, for one output and for several;
runtime failures are InferenceError. Real onnxruntime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgefleet.agent.errors import InferenceError
from edgefleet.agent.runtimes.onnx import OnnxRuntimeModel


def two_outputs(path: Path) -> Path:
    """x float32 [N,4] -> doubled = x + x, negated = -x (outputs declared in that order)."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["doubled"]),
            helper.make_node("Neg", ["x"], ["negated"]),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_every_output_is_returned_under_its_own_name(tmp_path):
    runtime = OnnxRuntimeModel(two_outputs(tmp_path / "two.onnx"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = runtime.run({"x": x})
    assert list(outputs) == ["doubled", "negated"]
    np.testing.assert_array_equal(outputs["doubled"], x + x)
    np.testing.assert_array_equal(outputs["negated"], -x)


def test_a_single_output_is_returned_under_its_name(unit_models):
    runtime = OnnxRuntimeModel(unit_models.a.path)
    x = {"x": np.ones((3, 4), np.float32)}
    outputs = runtime.run(x)
    assert list(outputs) == ["logits"]
    np.testing.assert_allclose(outputs["logits"], unit_models.a.reference(x)["logits"], rtol=1e-5)


def test_a_runtime_failure_is_an_inference_error(tmp_path):
    runtime = OnnxRuntimeModel(two_outputs(tmp_path / "two.onnx"))
    with pytest.raises(InferenceError, match="onnxruntime"):
        runtime.run({"x": np.ones((2, 5), np.float32)})  # the model takes [N, 4]
