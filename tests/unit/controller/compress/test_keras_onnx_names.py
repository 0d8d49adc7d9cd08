"""tf2onnx's graph gets the serving signature's names, outputs in its order: kept where tf2onnx
kept them (reordered if need be), mapped by position where it named them itself; inputs must
match by name (a ``:0`` suffix aside), or the target fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefleet.controller.compress.keras_convert import _name_like_signature
from edgefleet.controller.compress.keras_source import ServingModel
from edgefleet.controller.errors import ConversionError
from edgefleet.shared.manifest import IOSignature, TensorSpec
from support.onnx_session import cpu_session


def _serving(inputs: list[str], outputs: list[str]) -> ServingModel:
    signature = IOSignature(
        inputs=tuple(TensorSpec(name=n, dtype="float32", shape=(None, 3)) for n in inputs),
        outputs=tuple(TensorSpec(name=n, dtype="float32", shape=(None, 3)) for n in outputs),
    )
    return ServingModel(Path("unused"), None, None, signature, 0, 0.0, 0)


def _graph(inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """outputs[k] = inputs[0] * (k + 1): which output is which stays visible after renaming."""
    nodes, inits = [], []
    for k, name in enumerate(outputs):
        inits.append(helper.make_tensor(f"c{k}", TensorProto.FLOAT, [], [float(k + 1)]))
        nodes.append(helper.make_node("Mul", [inputs[0], f"c{k}"], [name], name=f"mul{k}"))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in outputs],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    onnx.checker.check_model(model)
    session = cpu_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


X = np.arange(6, dtype=np.float32).reshape(2, 3)


def test_tf2onnx_names_are_mapped_by_position_and_the_input_suffix_dropped():
    model = _graph(["image:0"], ["Identity:0", "Identity_1:0"])
    _name_like_signature(model, _serving(["image"], ["box", "logits"]))
    out = _run(model, {"image": X})
    assert list(out) == ["box", "logits"]
    np.testing.assert_array_equal(out["box"], X * 1)
    np.testing.assert_array_equal(out["logits"], X * 2)


def test_outputs_named_as_the_signature_are_put_in_its_order_not_renamed():
    model = _graph(["image"], ["logits", "box"])  # logits = 1x, box = 2x
    _name_like_signature(model, _serving(["image"], ["box", "logits"]))
    out = _run(model, {"image": X})
    assert list(out) == ["box", "logits"]
    np.testing.assert_array_equal(out["logits"], X * 1)
    np.testing.assert_array_equal(out["box"], X * 2)


def test_inputs_that_do_not_match_by_name_fail_the_target():
    model = _graph(["args_0:0"], ["Identity:0"])
    with pytest.raises(ConversionError, match=r"tf2onnx named the inputs \['args_0:0'\]"):
        _name_like_signature(model, _serving(["image"], ["output_0"]))


def test_a_different_output_count_fails_the_target():
    model = _graph(["image"], ["a", "b"])
    with pytest.raises(ConversionError, match="tf2onnx made 2 outputs of the signature's 1"):
        _name_like_signature(model, _serving(["image"], ["output_0"]))
