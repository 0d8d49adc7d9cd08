"""int8 from a float TFLite file with Google's ai-edge-quantizer (LiteRT tooling, no TensorFlow):
dynamic-range int8 weights (``tflite-int8``) or int8 weights and activations with integer IO
calibrated on ``--calib`` data (``tflite-full-int8``), each checked to hold its heavy operators'
weights in int8.

Files from model zoos are often older than the quantizer: their operator codes live in the
deprecated field only, and their weights are float16 constants behind DEQUANTIZE operators. Both
are rewritten first (the float16 weights unpacked to float32 constants), as the quantizer sees
only float32 weights and reads only the current operator-code field.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefleet.controller.errors import (
    ConversionError,
    Int8CoverageError,
    MissingPackageError,
)

QUANTIZER_PACKAGE = "ai-edge-quantizer==0.10.0"
# No square brackets: the CLI prints errors as rich markup.
QUANTIZER_INSTALL = f"pip install '{QUANTIZER_PACKAGE}' (it is in the controller's tflite extra)"
DEFAULT_SIGNATURE = "serving_default"
# Operators whose constant weights hold a model's size and arithmetic (by builtin name).
HEAVY_TFLITE_OPS = frozenset(
    {
        "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "FULLY_CONNECTED",
        "BATCH_MATMUL", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "LSTM",
        "UNIDIRECTIONAL_SEQUENCE_RNN", "SVDF", "EMBEDDING_LOOKUP",
    }
)  # fmt: skip
_INT8_TYPES = frozenset({"INT8", "UINT8", "INT4"})
_RECIPES = {"dynamic-range": "dynamic_wi8_afp32", "full integer (static)": "static_wi8_ai8"}
Mode = Literal["dynamic", "static"]


@dataclass(frozen=True)
class TfliteInt8Coverage:
    """Heavy operators of a TFLite model with constant weights (rank >= 2), by kind, and how
    many of their weight values are 8-bit integers (each tensor counted once)."""

    heavy_ops: dict[str, int]
    quantized_ops: dict[str, int]
    int8_weights: int
    float_weights: int
    float_ops: dict[str, int] = field(default_factory=dict)  # heavy operators left float

    @property
    def weight_share(self) -> float:
        total = self.int8_weights + self.float_weights
        return self.int8_weights / total if total else 0.0

    def as_details(self) -> dict[str, Any]:
        return {
            "heavy_ops": dict(self.heavy_ops),
            "int8_heavy_ops": dict(self.quantized_ops),
            "int8_weight_share": round(self.weight_share, 4),
            "int8_weights": self.int8_weights,
            "float_heavy_weights": self.float_weights,
        }


def require_quantizer(target: str) -> Any:
    """The ai-edge-quantizer modules (``quantizer``, ``recipe``).

    Raises:
        MissingPackageError: it is not installed, naming the package to install.
    """
    try:
        from ai_edge_quantizer import quantizer, recipe  # type: ignore[import-untyped]
    except ImportError as e:
        raise MissingPackageError(
            target, "ai-edge-quantizer", f"int8 from a TFLite file; {QUANTIZER_INSTALL}"
        ) from e
    return quantizer, recipe


def quantize_tflite(
    source: Path,
    dst: Path,
    target: str,
    mode: Mode,
    *,
    calibration: Iterable[dict[str, np.ndarray]] = (),
    min_share: float,
) -> dict[str, Any]:
    """Quantize the float TFLite ``source`` into ``dst`` and return the artifact's details.

    ``dynamic``: int8 weights, float activations (recipe ``dynamic_wi8_afp32``). ``static``: int8
    weights and activations, integer IO (``static_wi8_ai8``), calibrated on ``calibration``
    (single calls named as the model's inputs).

    Raises:
        MissingPackageError: ai-edge-quantizer is not installed.
        Int8CoverageError: the heavy operators' weights stayed mostly float.
        ConversionError: the quantizer fails, or a full-integer result keeps float IO.
    """
    quantizer, recipe = require_quantizer(target)
    staged = dst.with_name(f"{dst.stem}-staged.tflite")
    key, added = normalise_for_quantizer(source, staged, add_signature=mode == "static")
    try:
        if mode == "static":
            q = quantizer.Quantizer(str(staged), recipe.static_wi8_ai8())
            feeds = list(calibration)
            if not feeds:
                raise ConversionError(target, "no calibration samples")
            with warnings.catch_warnings():  # LiteRT warns that calibration keeps every tensor
                warnings.simplefilter("ignore", UserWarning)
                qsvs = q.calibrate({key: feeds})
                result = q.quantize(qsvs, enable_progress_report=False)
        else:
            q = quantizer.Quantizer(str(staged), recipe.dynamic_wi8_afp32())
            result = q.quantize(enable_progress_report=False)
        quantized = bytes(result.quantized_model)
        dst.write_bytes(_without_signatures(quantized) if added else quantized)
    except (MissingPackageError, ConversionError):
        raise
    except Exception as e:  # the quantizer raises many unrelated types
        raise ConversionError(target, f"ai-edge-quantizer: {type(e).__name__}: {e}") from e
    finally:
        staged.unlink(missing_ok=True)
    found = tflite_int8_coverage(source)
    coverage = tflite_int8_coverage(dst)
    label = "dynamic-range" if mode == "dynamic" else "full integer (static)"
    _require_int8_weights(target, label, found.heavy_ops, coverage, min_share)
    details: dict[str, Any] = {
        "quantization": f"{label}, ai-edge-quantizer "
        + ("dynamic_wi8_afp32" if mode == "dynamic" else "static_wi8_ai8"),
        **coverage.as_details(),
        "heavy_ops": found.heavy_ops,
    }
    if mode == "static":
        _require_integer_io(dst, target)
    return details


def normalise_for_quantizer(source: Path, dst: Path, *, add_signature: bool) -> tuple[str, bool]:
    """Write ``source`` to ``dst`` as the quantizer reads it: operator codes in their current
    field, float16 weights behind DEQUANTIZE unpacked to float32 constants (those operators and
    the float16 tensors removed), and, when asked and the model has none, a serving signature
    naming its input and output tensors by their own names (the quantizer calibrates through a
    signature). Returns the signature key to calibrate under and whether it was added.

    Raises:
        ConversionError: the file cannot be read, or it has several serving signatures.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model(str(source))
    except Exception as e:  # a corrupt flatbuffer fails in many ways
        raise ConversionError(source.name, f"cannot read the TFLite flatbuffer: {e}") from e
    for code in model.operatorCodes:
        code.builtinCode = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    for graph in model.subgraphs:
        if _unpack_float16(schema, model, graph):
            _drop_unused_tensors(model, graph)
    _drop_unused_buffers(model)
    signatures = list(model.signatureDefs or [])
    if len(signatures) > 1:
        keys = sorted(s.signatureKey.decode() for s in signatures)
        raise ConversionError(source.name, f"several serving signatures {keys}: give one")
    key = signatures[0].signatureKey.decode() if signatures else DEFAULT_SIGNATURE
    added = add_signature and not signatures
    if added:
        model.signatureDefs = [_default_signature(schema, model.subgraphs[0])]
    dst.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return key, added


def _without_signatures(content: bytes) -> bytes:
    """The quantized model without the signature added for calibration: LiteRT (and the agent)
    then name and order its tensors as they do the source's, by the tensors themselves."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _unpack_float16(schema: Any, model: Any, graph: Any) -> bool:
    dequantize = schema.BuiltinOperator.DEQUANTIZE
    kept, changed = [], False
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode == dequantize:
            packed = graph.tensors[op.inputs[0]]
            data = model.buffers[packed.buffer].data
            if packed.type == schema.TensorType.FLOAT16 and data is not None and len(data):
                raw = np.asarray(data, dtype=np.uint8).tobytes()
                values = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
                buffer = schema.BufferT()
                buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
                model.buffers.append(buffer)
                graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                changed = True
                continue
        kept.append(op)
    graph.operators = kept
    return changed


def _drop_unused_tensors(model: Any, graph: Any) -> None:
    """Keep only tensors an operator or the graph's boundary uses (LiteRT's calibration reads
    every tensor; one with neither data nor producer fails it), renumbering references."""
    used = {i for op in graph.operators for i in (*op.inputs, *op.outputs) if i >= 0}
    used |= {int(i) for i in (*graph.inputs, *graph.outputs)}
    order = sorted(used)
    new = {old: n for n, old in enumerate(order)}
    graph.tensors = [graph.tensors[i] for i in order]
    for op in graph.operators:
        op.inputs = [new[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [new[i] if i >= 0 else i for i in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [new[i] for i in op.intermediates if i in new]
    graph.inputs = [new[int(i)] for i in graph.inputs]
    graph.outputs = [new[int(i)] for i in graph.outputs]
    index = model.subgraphs.index(graph)
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == index:
            for entry in (*signature.inputs, *signature.outputs):
                entry.tensorIndex = new[entry.tensorIndex]


def _drop_unused_buffers(model: Any) -> None:
    used = {0} | {t.buffer for g in model.subgraphs for t in g.tensors}
    used |= {m.buffer for m in model.metadata or []}
    order = sorted(used)
    new = {old: n for n, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = new[tensor.buffer]
    for metadata in model.metadata or []:
        metadata.buffer = new[metadata.buffer]


def _default_signature(schema: Any, graph: Any) -> Any:
    def entry(index: int) -> Any:
        item = schema.TensorMapT()
        item.name, item.tensorIndex = graph.tensors[index].name, int(index)
        return item

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = DEFAULT_SIGNATURE.encode(), 0
    signature.inputs = [entry(i) for i in graph.inputs]
    signature.outputs = [entry(i) for i in graph.outputs]
    return signature


def tflite_int8_coverage(path: Path) -> TfliteInt8Coverage:
    """Which heavy operators of a TFLite model carry 8-bit integer constant weights (followed
    back through DEQUANTIZE, as weight-only and float16 models store them).

    Raises:
        ConversionError: the file is not a readable TFLite model.
    """
    from ai_edge_litert import schema_py_generated as schema

    buf = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(buf, 0)
    except Exception as e:  # a corrupt flatbuffer fails in many ways
        raise ConversionError(path.name, f"not a readable TFLite model ({e})") from e
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    heavy: Counter[str] = Counter()
    quantized: Counter[str] = Counter()
    floating_ops: Counter[str] = Counter()
    int8: dict[tuple[int, int], int] = {}
    floating: dict[tuple[int, int], int] = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        producers = {
            int(graph.Operators(o).Outputs(k)): o
            for o in range(graph.OperatorsLength())
            for k in range(graph.Operators(o).OutputsLength())
        }
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            name = _op_name(model, op, ops)
            if name not in HEAVY_TFLITE_OPS:
                continue
            weights = []
            for k in range(op.InputsLength()):
                found = _constant(model, graph, int(op.Inputs(k)), producers, ops, buf)
                if found is not None and len(found[2]) >= 2:
                    weights.append(found)
            if not weights:
                continue  # activations times activations: nothing stored to quantize
            heavy[name] += 1
            if all(types.get(t.Type()) in _INT8_TYPES for _, t, _ in weights):
                quantized[name] += 1
            else:
                floating_ops[name] += 1
            for index, tensor, shape in weights:
                size = int(np.prod(shape))
                into = int8 if types.get(tensor.Type()) in _INT8_TYPES else floating
                into[(g, index)] = size
    return TfliteInt8Coverage(
        heavy_ops=dict(heavy),
        quantized_ops=dict(quantized),
        int8_weights=sum(int8.values()),
        float_weights=sum(floating.values()),
        float_ops=dict(floating_ops),
    )


def _op_name(model: Any, op: Any, names: dict[int, str]) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    return names.get(max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode())), "")


def _constant(
    model: Any, graph: Any, index: int, producers: dict[int, int], ops: dict[int, str], buf: bytes
) -> tuple[int, Any, list[int]] | None:
    """(tensor index, tensor, shape) of the constant behind input ``index``, through one
    DEQUANTIZE; None for an activation."""
    if index < 0:
        return None
    tensor = graph.Tensors(index)
    if _has_data(model, tensor.Buffer()):
        shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        return index, tensor, shape
    producer = producers.get(index)
    if producer is not None:
        op = graph.Operators(producer)
        if _op_name(model, op, ops) == "DEQUANTIZE" and op.InputsLength():
            inner = int(op.Inputs(0))
            stored = graph.Tensors(inner)
            if _has_data(model, stored.Buffer()):
                shape = [int(d) for d in stored.ShapeAsNumpy()] if stored.ShapeLength() else []
                return inner, stored, shape
    return None


def _has_data(model: Any, index: int) -> bool:
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return bool(buffer.DataLength()) or (int(buffer.Offset()) > 1 and int(buffer.Size()) > 0)


def _require_int8_weights(
    target: str,
    mode: str,
    found: dict[str, int],
    coverage: TfliteInt8Coverage,
    min_share: float,
) -> None:
    """Refuse an int8 artifact whose heavy weights are mostly float: the float model under
    another name."""
    if found and coverage.weight_share >= min_share:
        return
    if not found:
        reason = (
            "It has no convolution, fully-connected, matrix-product or recurrent operator with "
            "constant weights."
        )
    else:
        left = ", ".join(f"{op} x{n}" for op, n in sorted(coverage.float_ops.items()))
        reason = f"ai-edge-quantizer left {left} float ({coverage.float_weights:,} weight values)"
        recipe_ops = sorted(_heavy_ops_of_recipe(mode))
        reason += f"; its recipe quantizes {', '.join(recipe_ops)} only." if recipe_ops else "."
    raise Int8CoverageError(
        target, mode, found, coverage.quantized_ops, coverage.weight_share,
        f"{reason} An int8 artifact needs at least {min_share:.0%} of those weights in int8.",
    )  # fmt: skip


def _heavy_ops_of_recipe(mode: str) -> set[str]:
    """The heavy operators ai-edge-quantizer's default policy quantizes in ``mode``'s recipe
    (empty when the policy cannot be read)."""
    try:
        from ai_edge_quantizer import default_policy

        policy = json.loads(default_policy.DEFAULT_JSON_POLICY)
        ops = set(policy["ops_per_config"][_RECIPES[mode]])
    except (ImportError, AttributeError, KeyError, ValueError):
        return set()
    renamed = {"CONV_2D_TRANSPOSE": "TRANSPOSE_CONV"}  # the policy's name for the builtin
    return {renamed.get(op, op) for op in ops} & HEAVY_TFLITE_OPS


def _require_integer_io(path: Path, target: str) -> None:
    """A full-integer model takes and gives quantized integers at its boundary."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = (*interpreter.get_input_details(), *interpreter.get_output_details())
    floating = sorted(str(d["name"]) for d in details if np.issubdtype(d["dtype"], np.floating))
    if floating:
        raise ConversionError(target, f"float tensors left at the boundary: {floating}")
