"""ONNX models whose tensors read external data, for the agent's refusal tests.

Each model outputs the bytes of its external tensor as ``leak`` (uint8), so a runtime that
followed the path would hand the file's contents to whoever runs inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgefleet.shared.manifest import IOSignature, TensorSpec
from support.agent_models import OPSET, BuiltModel

PLACES = ("initializer", "constant", "subgraph", "sparse", "function")


def external_tensor(name: str, location: str, length: int) -> TensorProto:
    """A uint8 tensor of ``length`` bytes kept at ``location`` (offset 0)."""
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.UINT8
    tensor.dims.append(length)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _leak_nodes(place: str, tensor: TensorProto) -> tuple[list, list, list, list]:
    """(nodes, initializers, sparse initializers, functions) producing ``leak`` from it."""
    if place == "initializer":
        return [helper.make_node("Identity", [tensor.name], ["leak"])], [tensor], [], []
    if place == "constant":
        return [helper.make_node("Constant", [], ["leak"], value=tensor)], [], [], []
    if place == "subgraph":  # inside both branches of an If, one level down
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["inner"], value=tensor)],
            "branch",
            [],
            [helper.make_tensor_value_info("inner", TensorProto.UINT8, None)],
        )
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        nodes = [
            helper.make_node("Constant", [], ["c"], value=cond),
            helper.make_node("If", ["c"], ["leak"], then_branch=branch, else_branch=branch),
        ]
        return nodes, [], [], []
    if place == "sparse":
        length = tensor.dims[0]
        indices = helper.make_tensor("idx", TensorProto.INT64, [length], list(range(length)))
        sparse = helper.make_sparse_tensor(tensor, indices, [length])
        return [helper.make_node("Identity", [tensor.name], ["leak"])], [], [sparse], []
    if place == "function":
        body = helper.make_node("Constant", [], ["out"], value=tensor)
        function = helper.make_function(
            "leaks", "Leak", [], ["out"], [body], [helper.make_opsetid("", OPSET)]
        )
        return [helper.make_node("Leak", [], ["leak"], domain="leaks")], [], [], [function]
    raise ValueError(place)


def leaking_model(path: Path, location: str, length: int, place: str = "initializer") -> BuiltModel:
    """x float32 [N,4] -> echo (= x) and leak uint8 [length] (= the external bytes)."""
    tensor = external_tensor("W", location, length)
    nodes, inits, sparse, functions = _leak_nodes(place, tensor)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["echo"]), *nodes],
        "leak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("leak", TensorProto.UINT8, [length]),
        ],
        inits,
        sparse_initializer=sparse,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if functions:
        opsets.append(helper.make_opsetid("leaks", 1))
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())  # not checked: the checker reads the file

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("a leaking model has no reference: it must never run")

    signature = IOSignature(
        inputs=(TensorSpec(name="x", dtype="float32", shape=(None, 4)),),
        outputs=(
            TensorSpec(name="echo", dtype="float32", shape=(None, 4)),
            TensorSpec(name="leak", dtype="uint8", shape=(length,)),
        ),
    )
    return BuiltModel(path, signature, "onnx-fp32", reference)


def load(path: Path) -> onnx.ModelProto:
    """The model at ``path`` without following its external data."""
    return onnx.load(str(path), load_external_data=False)
