"""Small int8 graphs that onnxruntime's exact-int8 mode (``session.x64quantprecision``) cannot
load as they stand on x86: the shapes artifacts built elsewhere may have, and that
:func:`edgefleet.controller.compress.compact.exact_int8_loadable` rewrites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(2, 4)


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], width: int
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "shared-int8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _activation() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    return (
        [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        ],
        [
            numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        ],
    )


def shared_dequantize(path: Path) -> Path:
    """One DequantizeLinear of a stored int8 constant (beyond int7) read by two nodes, as a
    quantizer leaves the 3 of every hard-swish."""
    nodes, inits = _activation()
    nodes += [
        helper.make_node("DequantizeLinear", ["c", "c_scale", "c_zero"], ["c_dq"]),
        helper.make_node("Add", ["x_dq", "c_dq"], ["added"]),
        helper.make_node("Mul", ["x_dq", "c_dq"], ["scaled"]),
        helper.make_node("Concat", ["added", "scaled"], ["y"], axis=1),
    ]
    inits += [
        numpy_helper.from_array(np.array([100, -90, 120, 70], np.int8), "c"),
        numpy_helper.from_array(np.array(0.05, np.float32), "c_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "c_zero"),
    ]
    onnx.save(_model(nodes, inits, 8), str(path))
    return path


def shared_weight(path: Path) -> Path:
    """Two MatMuls whose weight DequantizeLinear nodes read one stored int8 tensor."""
    nodes, inits = _activation()
    nodes += [
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w1"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w2"]),
        helper.make_node("MatMul", ["x_dq", "w1"], ["m1"]),
        helper.make_node("MatMul", ["x_dq", "w2"], ["m2"]),
        helper.make_node("Concat", ["m1", "m2"], ["y"], axis=1),
    ]
    weight = np.arange(-120, 120, 15, dtype=np.int8).reshape(4, 4)
    inits += [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
    ]
    onnx.save(_model(nodes, inits, 8), str(path))
    return path


def axis_without_zero_point(path: Path) -> Path:
    """A weight-only per-channel DequantizeLinear (float activations) with no zero point: it
    reads as 0."""
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "w_scale"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["x", "w_dq"], ["y"]),
    ]
    weight = np.array([[127, -100, 90, 80, -127, 66]] * 4, np.int8)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.linspace(0.01, 0.06, 6).astype(np.float32), "w_scale"),
    ]
    onnx.save(_model(nodes, inits, 6), str(path))
    return path


BUILDERS = {
    "shared DequantizeLinear": shared_dequantize,
    "shared weight": shared_weight,
    "per-axis without zero point": axis_without_zero_point,
}
