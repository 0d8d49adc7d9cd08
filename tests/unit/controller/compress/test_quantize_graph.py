"""The Gemm -> MatMul + Add rewrite that lets dynamic int8 quantize dense layers is exact."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from edgefleet.controller.compress.quantize import gemm_to_matmul
from support.models_compress import WideMlp
from support.onnx_session import cpu_session


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = cpu_session(model.SerializeToString())
    return session.run(None, {"features": x})[0]


def test_gemm_rewrite_preserves_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(
        WideMlp().eval(),
        (torch.randn(1, 32),),
        str(path),
        input_names=["features"],
        dynamic_axes={"features": {0: "b"}},
        dynamo=False,
    )
    original = onnx.load(str(path))
    assert any(n.op_type == "Gemm" for n in original.graph.node)
    rewritten = gemm_to_matmul(onnx.load(str(path)))
    onnx.checker.check_model(rewritten)
    assert not any(n.op_type == "Gemm" for n in rewritten.graph.node)
    assert sum(n.op_type == "MatMul" for n in rewritten.graph.node) == 3
    x = np.random.default_rng(0).normal(size=(7, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=1e-5, atol=1e-5)
