"""``tflite-fp32`` from an ONNX graph with onnx2tf (the ``tensorflow`` extra), holding the ONNX
model's signature: the same input and output names, in its order, in its layout.

onnx2tf runs in a child process (:mod:`._onnx2tf_worker`) whose output is logged to a file in the
work directory, shown only when it fails, and whose temporary files stay there too. Its result is
then fixed up here: onnx2tf keeps NCHW inputs when asked but turns NCHW outputs into NHWC and
names outputs ``Identity``, ``Identity_1``...; each output is compared with the ONNX model's on
evaluation samples, as it is and transposed back, a TRANSPOSE operator restores the layout where
that is what matches, and anything that matches neither way fails the target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.controller.compress import _onnx2tf_worker
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.evaluate import run_data
from edgefleet.controller.compress.runners import LiteRtRunner, OnnxRunner
from edgefleet.controller.compress.signatures import (
    conversion_errors,
    peak_relative_error,
    require_same_signature,
    shape_text,
)
from edgefleet.controller.compress.sources import onnx_signature
from edgefleet.controller.compress.tensorflow_extra import EXTRA, log_tail, require_onnx2tf
from edgefleet.controller.errors import (
    ConversionError,
    MissingExtraError,
    UnconvertibleNodeError,
)
from edgefleet.shared.manifest import IOSignature

TARGET = "tflite-fp32"
CONVERTER = "onnx2tf"
TIMEOUT_S = 1800.0
CHECK_SAMPLES = 32
# fp32 to fp32: a converted output within 1 % of the output's peak is the same computation; a
# wrong layout or a wrong mapping is off by the size of the values themselves.
MAX_REL_ERROR = 1e-2


def onnx_to_tflite(onnx_path: Path, work: Path, check: Dataset) -> tuple[Path, dict[str, Any]]:
    """Convert ``onnx_path`` into ``work/model-fp32.tflite``; returns it and its report details.

    ``check`` is single-call evaluation data the result is compared with the ONNX model on.

    Raises:
        MissingExtraError: onnx2tf or TensorFlow is not installed (naming the extra).
        UnconvertibleNodeError: onnx2tf cannot convert a node (naming it and its operator).
        ConversionError: onnx2tf fails otherwise (with the end of its log), the result needs
            TensorFlow (Flex) operators, or its outputs do not match the ONNX model's.
        SignatureMismatchError: the result's inputs or outputs differ from the ONNX model's.
    """
    require_onnx2tf(f"{TARGET} from an ONNX model")
    model = onnx.load(str(onnx_path), load_external_data=False)
    signature = onnx_signature(model)
    raw = _run_onnx2tf(onnx_path, work / "onnx2tf", signature, model)
    dst = work / "model-fp32.tflite"
    flatbuffer = _read(raw)
    _refuse_flex_ops(flatbuffer)
    _name_boundary(flatbuffer, signature)
    _write(flatbuffer, dst)
    samples = check.take(slice(0, min(CHECK_SAMPLES, check.size)))
    reference = run_data(OnnxRunner(onnx_path), samples)
    transposed = _layouts_to_restore(reference, run_data(LiteRtRunner(dst), samples))
    if transposed:
        _transpose_outputs(flatbuffer, transposed)
        _write(flatbuffer, dst)
    errors = conversion_errors(
        reference, run_data(LiteRtRunner(dst), samples), target=TARGET, source="ONNX"
    )
    for name, (abs_error, rel_error) in errors.items():
        if not rel_error <= MAX_REL_ERROR:
            raise ConversionError(
                TARGET,
                f"{CONVERTER}'s output {name!r} differs from the ONNX model's by up to "
                f"{abs_error:.3g} ({rel_error:.1%} of its peak) on {samples.size} evaluation "
                f"samples; at most {MAX_REL_ERROR:.0%} is a faithful float conversion",
            )
    converted = LiteRtRunner(dst).signature
    require_same_signature(TARGET, signature, converted, reference="the ONNX model")
    details: dict[str, Any] = {
        "built_from": f"the ONNX model, converted by {CONVERTER} {_version()}",
        "kept_layout": [s.name for s in signature.inputs if 3 <= len(s.shape) <= 5],
        "conversion_check": {
            "samples": samples.size,
            "max_abs_error": max(e for e, _ in errors.values()),
            "max_rel_error": max(r for _, r in errors.values()),
        },
    }
    if transposed:
        details["outputs_transposed_back_to_onnx_layout"] = sorted(transposed)
    return dst, details


def _run_onnx2tf(
    onnx_path: Path, out: Path, signature: IOSignature, model: onnx.ModelProto
) -> Path:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tmp"
    tmp.mkdir(exist_ok=True)
    result_file, log_file = out / "result.json", out / "onnx2tf.log"
    request = {
        "onnx": str(onnx_path.resolve()),
        "output": str(out),
        "keep_layout": [s.name for s in signature.inputs if 3 <= len(s.shape) <= 5],
        "result": str(result_file),
    }
    (out / "request.json").write_text(json.dumps(request), encoding="utf-8")
    # Its temporary files (onnx2tf's JSON attempts) and Keras' config stay in the work dir.
    env = {**os.environ, "TMPDIR": str(tmp), "KERAS_HOME": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with log_file.open("wb") as log:
        try:
            proc = subprocess.run(
                # -P: the script's own directory (this package's modules) is not importable.
                [sys.executable, "-P", _onnx2tf_worker.__file__, str(out / "request.json")],
                cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise ConversionError(TARGET, f"{CONVERTER} timed out after {TIMEOUT_S:.0f} s") from e
    text = log_file.read_text(encoding="utf-8", errors="replace")
    result: dict[str, Any] = {}
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
    if proc.returncode == 0 and result.get("ok"):
        return Path(result["tflite"])
    if proc.returncode == _onnx2tf_worker.MISSING_EXIT and "missing" in result:
        raise MissingExtraError(
            f"{TARGET} from an ONNX model", CONVERTER, EXTRA, str(result.get("error", ""))
        )
    node = result.get("node")
    if node:
        raise UnconvertibleNodeError(
            TARGET, CONVERTER, node, _op_type(model, node), _reason(str(result.get("error")))
        )
    reason = result.get("error") or f"exit status {proc.returncode}"
    raise ConversionError(TARGET, f"{CONVERTER} failed ({reason}); its log ends:\n{log_tail(text)}")


def _op_type(model: onnx.ModelProto, node: str) -> str:
    return next((n.op_type for n in model.graph.node if n.name == node), "")


def _reason(error: str) -> str:
    missing = re.search(r"No module named 'onnx2tf\.ops\.(\w+)'", error)
    if missing:
        return f"it has no conversion for {missing.group(1)} operators"
    return error


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2tf")
    except PackageNotFoundError:
        return "(version unknown)"


# --- the flatbuffer -----------------------------------------------------------------------------


def _read(path: Path) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        return flatbuffer_utils.read_model(str(path))
    except Exception as e:  # a corrupt flatbuffer fails in many ways
        raise ConversionError(TARGET, f"{CONVERTER} wrote an unreadable TFLite file: {e}") from e


def _write(model: Any, path: Path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def _refuse_flex_ops(model: Any) -> None:
    """onnx2tf lets TensorFlow keep operators TFLite has no builtin for (Flex ops): LiteRT on a
    device cannot run them."""
    flex = sorted(
        {
            code.customCode.decode(errors="replace")
            for code in model.operatorCodes
            if code.customCode and code.customCode.startswith(b"Flex")
        }
    )
    if flex:
        raise ConversionError(
            TARGET,
            f"{CONVERTER} kept TensorFlow operators LiteRT cannot run without the Flex "
            f"delegate: {', '.join(flex)}",
        )


def _name_boundary(model: Any, signature: IOSignature) -> None:
    """Name the graph's inputs and outputs as the ONNX model's and drop any serving signature:
    LiteRT then names the tensors by themselves, in the graph's (ONNX's) order. Inputs are
    matched by name (onnx2tf keeps them, sanitised where TensorFlow needs), outputs by position.

    Raises:
        ConversionError: an input cannot be matched, or the output count differs.
    """
    graph = model.subgraphs[0]
    if len(model.subgraphs[0].inputs) != len(signature.inputs):
        raise ConversionError(
            TARGET,
            f"{CONVERTER} made {len(graph.inputs)} inputs of the ONNX model's "
            f"{len(signature.inputs)}",
        )
    if len(graph.outputs) != len(signature.outputs):
        raise ConversionError(
            TARGET,
            f"{CONVERTER} made {len(graph.outputs)} outputs of the ONNX model's "
            f"{len(signature.outputs)}",
        )
    wanted = {_sanitised(s.name): s.name for s in signature.inputs}
    for index in graph.inputs:
        tensor = graph.tensors[index]
        have = tensor.name.decode(errors="replace")
        name = wanted.pop(_sanitised(have), None)
        if name is None and len(signature.inputs) == 1 and wanted:
            name = wanted.popitem()[1]
        if name is None:
            raise ConversionError(
                TARGET,
                f"{CONVERTER}'s input {have!r} matches none of the ONNX model's inputs "
                f"{[s.name for s in signature.inputs]}",
            )
        tensor.name = name.encode()
    for index, spec in zip(graph.outputs, signature.outputs, strict=True):
        graph.tensors[index].name = spec.name.encode()
    model.signatureDefs = []


def _sanitised(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name.split(":")[0]).strip("_").lower()


def _nhwc_to_nchw(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


def _layouts_to_restore(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> set[str]:
    """The outputs that match the ONNX model's only once transposed from NHWC back to NCHW."""
    restore = set()
    for name, ref in reference.items():
        out = got[name]
        if out.shape == ref.shape and peak_relative_error(ref, out) <= MAX_REL_ERROR:
            continue
        if 3 <= out.ndim <= 5:
            back = out.transpose(_nhwc_to_nchw(out.ndim))
            if back.shape == ref.shape and peak_relative_error(ref, back) <= MAX_REL_ERROR:
                restore.add(name)
                continue
        if out.shape != ref.shape:
            raise ConversionError(
                TARGET,
                f"{CONVERTER}'s output {name!r} has shape {shape_text(out.shape)} where the "
                f"ONNX model's has {shape_text(ref.shape)}, and no transpose of its layout "
                "gives the ONNX model's values",
            )
    return restore


def _transpose_outputs(model: Any, names: set[str]) -> None:
    """Append a TRANSPOSE (NHWC -> NCHW) to each named graph output; it keeps the name."""
    from ai_edge_litert import schema_py_generated as schema

    code = _opcode(model, schema, schema.BuiltinOperator.TRANSPOSE)
    graph = model.subgraphs[0]
    for position, index in enumerate(list(graph.outputs)):
        tensor = graph.tensors[index]
        name = tensor.name.decode()
        if name not in names:
            continue
        perm = _nhwc_to_nchw(len(tensor.shape))
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(np.asarray(perm, np.int32).tobytes(), np.uint8)
        model.buffers.append(buffer)
        perm_tensor = schema.TensorT()
        perm_tensor.name = f"{name}/nchw_perm".encode()
        perm_tensor.shape = [len(perm)]
        perm_tensor.type = schema.TensorType.INT32
        perm_tensor.buffer = len(model.buffers) - 1
        out = schema.TensorT()
        out.name, out.type, out.buffer = name.encode(), tensor.type, 0
        out.shape = [int(tensor.shape[p]) for p in perm]
        if tensor.shapeSignature is not None and len(tensor.shapeSignature):
            out.shapeSignature = [int(tensor.shapeSignature[p]) for p in perm]
        tensor.name = f"{name}/nhwc".encode()
        graph.tensors.extend([perm_tensor, out])
        op = schema.OperatorT()
        op.opcodeIndex = code
        op.inputs = [int(index), len(graph.tensors) - 2]
        op.outputs = [len(graph.tensors) - 1]
        op.builtinOptionsType = schema.BuiltinOptions.TransposeOptions
        op.builtinOptions = schema.TransposeOptionsT()
        graph.operators.append(op)
        outputs = [int(i) for i in graph.outputs]
        outputs[position] = len(graph.tensors) - 1
        graph.outputs = outputs


def _opcode(model: Any, schema: Any, builtin: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1
