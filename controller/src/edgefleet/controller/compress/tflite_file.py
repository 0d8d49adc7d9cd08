"""What a TFLite file holds, read from its flatbuffer without running it: its constant tensors by
dtype, the Edge TPU's custom operator, and the names its serving signature gives its tensors."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.controller.errors import ModelLoadError

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
TFLITE_IDENTIFIER = b"TFL3"
# Dtypes a weight is stored in; their element counts are the model's parameters.
WEIGHT_DTYPES = ("float32", "float16", "float64", "int8", "uint8")


@dataclass(frozen=True)
class TfliteContents:
    """A TFLite model as read from its bytes.

    ``io_names`` maps tensor indices to the names of the model's serving signature when it has
    exactly one, as the agent's LiteRT runtime names them; empty otherwise (the tensors' own
    names are used).
    """

    constants: dict[str, int]  # dtype -> elements in constant tensors
    sparsity: float  # exact zeros among weight matrices (rank >= 2)
    edgetpu_ops: int  # operators edgetpu_compiler replaced with its custom op
    cpu_ops: int  # every other operator
    io_names: dict[int, str]
    signatures: int


def is_tflite(path: Path) -> bool:
    """Whether ``path`` carries the TFLite flatbuffer identifier (bytes 4-8).

    Raises:
        OSError: it cannot be read.
    """
    with path.open("rb") as handle:
        return handle.read(8)[4:8] == TFLITE_IDENTIFIER


def read_tflite(path: Path) -> TfliteContents:
    """Read ``path``'s flatbuffer.

    Raises:
        ModelLoadError: not a readable TFLite model.
    """
    from ai_edge_litert import schema_py_generated as schema

    buf = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(buf, 0)
        tpu_ops, cpu_ops = _edgetpu_op_count(schema, model)
        constants, sparsity = _constants(schema, model, buf)
        return TfliteContents(
            constants=constants,
            sparsity=sparsity,
            edgetpu_ops=tpu_ops,
            cpu_ops=cpu_ops,
            io_names=_signature_names(model),
            signatures=int(model.SignatureDefsLength()),
        )
    except Exception as e:  # a corrupt flatbuffer fails in many ways
        raise ModelLoadError(str(path), f"not a readable TFLite model ({e})") from e


def _constants(schema: Any, model: Any, buf: bytes) -> tuple[dict[str, int], float]:
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    counts: Counter[str] = Counter()
    zeros = matrix = 0
    seen: set[int] = set()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            index = tensor.Buffer()
            raw = _buffer_bytes(model, index, buf)
            if not raw or index in seen:
                continue
            seen.add(index)
            dtype = types.get(tensor.Type(), "other")
            shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            size = math.prod(shape) if shape else 1
            counts[dtype] += size
            if dtype in WEIGHT_DTYPES and len(shape) >= 2:
                values = np.frombuffer(raw, dtype=np.dtype(dtype), count=size)
                matrix += size
                zeros += int(np.count_nonzero(values == 0))
    return dict(sorted(counts.items())), zeros / matrix if matrix else 0.0


def _buffer_bytes(model: Any, index: int, buf: bytes) -> bytes:
    """A buffer's bytes, inline or (models over 2 GB, and some converters) at an offset."""
    if index <= 0 or index >= model.BuffersLength():
        return b""
    buffer = model.Buffers(index)
    if buffer.DataLength():
        return bytes(buffer.DataAsNumpy().tobytes())
    offset, size = int(buffer.Offset()), int(buffer.Size())
    return buf[offset : offset + size] if offset > 1 and size else b""


def _edgetpu_op_count(schema: Any, model: Any) -> tuple[int, int]:
    """Operators that run on the Edge TPU (its custom op) and those left on the CPU."""
    custom = schema.BuiltinOperator.CUSTOM
    tpu_codes = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == custom and (code.CustomCode() or b"").decode() == EDGETPU_CUSTOM_OP:
            tpu_codes.add(i)
    tpu = cpu = 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            if graph.Operators(o).OpcodeIndex() in tpu_codes:
                tpu += 1
            else:
                cpu += 1
    return tpu, cpu


def _signature_names(model: Any) -> dict[int, str]:
    """Tensor index -> the name of the serving signature, when there is exactly one (LiteRT's
    default signature runner, which the agent uses, needs exactly one)."""
    if model.SignatureDefsLength() != 1:
        return {}
    signature = model.SignatureDefs(0)
    maps = [signature.Inputs(i) for i in range(signature.InputsLength())]
    maps += [signature.Outputs(i) for i in range(signature.OutputsLength())]
    return {int(m.TensorIndex()): m.Name().decode() for m in maps}
