"""Prebuilt artifacts: ONNX, TFLite and Edge TPU files built elsewhere, each checked to be what its
target says, loaded in the controller's runtime and evaluated exactly as a compressed artifact is
(golden pairs, report) before anything is registered."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edgefleet.controller.compress.built import BuiltFile, Notify, quiet
from edgefleet.controller.compress.data import Dataset, check_against_signature
from edgefleet.controller.compress.evaluate import (
    call_batch,
    compare_mode,
    evaluate_artifact,
    float_call,
    is_classifier,
    materialise,
    run_data,
)
from edgefleet.controller.compress.external_data import save_self_contained
from edgefleet.controller.compress.recipe import Recipe, Task, validate_targets
from edgefleet.controller.compress.runners import (
    ORT_CHUNK,
    ArtifactRunner,
    LiteRtRunner,
    OnnxRunner,
)
from edgefleet.controller.compress.sources import dtype_name, onnx_source
from edgefleet.controller.compress.tflite_file import (
    EDGETPU_CUSTOM_OP,
    WEIGHT_DTYPES,
    is_tflite,
    read_tflite,
)
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.errors import (
    ArtifactTargetMismatchError,
    CompressionError,
    ConversionError,
    ModelLoadError,
    SignatureMismatchError,
    VersionExistsError,
)
from edgefleet.controller.registry.records import ArtifactReport, NewArtifact, VersionRecord
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.shared.bounds import MAX_LATENCY_MS
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import (
    ArtifactTarget,
    DType,
    IOSignature,
    TensorSpec,
    runtime_for_target,
)

__all__ = [  # the errors live in edgefleet.controller.errors; named here for this module's callers
    "CPU_TWIN_TARGET", "NO_TWIN", "ArtifactTargetMismatchError", "ImportResult",
    "PrebuiltArtifact", "SignatureMismatchError", "import_and_register", "import_artifacts",
    "parse_artifact_spec",
]  # fmt: skip

# The CPU twin of an edgetpu artifact: the full-integer model edgetpu_compiler compiled it from.
CPU_TWIN_TARGET: ArtifactTarget = "tflite-full-int8"
REFERENCE_TARGETS = ("onnx-fp32", "tflite-fp32")
INT8_TARGETS = frozenset({"onnx-int8", "tflite-int8", "tflite-full-int8"})
NO_TWIN = (
    f"no CPU twin given (--artifact {CPU_TWIN_TARGET}=PATH: the full-integer model "
    "edgetpu_compiler compiled) and no Edge TPU here: golden pairs, agreement and latency "
    "skipped; the device checks its outputs' dtypes, shapes and finiteness only"
)
IoTensor = tuple[DType, tuple[int, ...], tuple[float, int]]  # dtype, shape (-1 dynamic), quant


@dataclass(frozen=True)
class PrebuiltArtifact:
    """A file built elsewhere and the target it is imported as."""

    target: ArtifactTarget
    path: Path


def parse_artifact_spec(spec: str) -> PrebuiltArtifact:
    """``TARGET=PATH`` from the command line.

    Raises:
        CompressionError: not of that form. UnknownTargetError: an unknown target.
    """
    target, sep, path = spec.partition("=")
    if not sep or not target.strip() or not path.strip():
        raise CompressionError(f"--artifact takes TARGET=PATH, got {spec!r}")
    (checked,) = validate_targets([target.strip()])
    return PrebuiltArtifact(checked, Path(path.strip()).expanduser())


@dataclass
class ImportResult:
    """Evaluated artifacts ready to register, and which one the others were compared with."""

    artifacts: list[NewArtifact]
    reference: ArtifactTarget
    cpu_twin: ArtifactTarget | None
    source_sha256: str
    source_size: int
    summary: dict[str, Any]
    reports: dict[str, ArtifactReport] = field(default_factory=dict)


@dataclass(frozen=True)
class _Census:
    """Constant tensors by dtype (element counts) and exact zeros among weight matrices."""

    elements: dict[str, int]
    sparsity: float

    @property
    def params(self) -> int:
        return sum(self.elements.get(d, 0) for d in WEIGHT_DTYPES)

    def share(self, *dtypes: str) -> float:
        return sum(self.elements.get(d, 0) for d in dtypes) / self.params if self.params else 0.0


@dataclass
class _Opened:
    """One prebuilt file after its checks: its runner (none for edgetpu: no Edge TPU here)."""

    file: PrebuiltArtifact
    census: _Census
    signature: IOSignature  # native dtypes, names as the agent will see them
    quantized: frozenset[str]  # IO tensors that hold quantized integers (scale != 0)
    io: dict[str, IoTensor]  # name -> dtype, shape, q
    runner: ArtifactRunner | None
    evaluate_as: Path | None = None  # what runs in its place: an edgetpu artifact's CPU twin
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> ArtifactTarget:
        return self.file.target

    def float_signature(self) -> IOSignature:
        """The signature in the float domain: quantized IO tensors read as float32."""

        def floated(spec: TensorSpec) -> TensorSpec:
            quantized = spec.name in self.quantized
            return spec.model_copy(update={"dtype": "float32"}) if quantized else spec

        return IOSignature(
            inputs=tuple(floated(s) for s in self.signature.inputs),
            outputs=tuple(floated(s) for s in self.signature.outputs),
        )


def import_artifacts(
    files: Sequence[PrebuiltArtifact],
    evaluation: Dataset,
    *,
    task: Task = "auto",
    settings: Settings | None = None,
    notify: Notify = quiet,
    work_dir: Path | None = None,
) -> ImportResult:
    """Check, load and evaluate every file; nothing is registered here.

    An ONNX file with external data (weights in files beside it) is packed into one
    self-contained file in ``work_dir`` (a new temporary directory the caller owns when not
    given), which the result's artifact then names: an artifact is one file.

    The reference the others are compared with is the first fp32 artifact given (``onnx-fp32``
    or ``tflite-fp32``), else the first one that runs here. An ``edgetpu`` artifact cannot run
    on this machine: its golden pairs, agreement and latency come from its CPU twin, the
    ``tflite-full-int8`` artifact of the same import, whose inputs and outputs must equal its
    own. Without a twin they are skipped, with the reason in its report
    (``ArtifactReport.unmeasured``), and the device checks its outputs' dtypes, shapes and
    finiteness only; the evaluation data must still fit it.

    Raises:
        ArtifactTargetMismatchError: a file is not what its target says.
        SignatureMismatchError: artifacts disagree on inputs or outputs.
        ModelLoadError: a runtime cannot load or run a file.
        DataMismatchError: the evaluation data does not fit the model.
    """
    settings = settings or get_settings()
    targets = [f.target for f in files]
    if not files:
        raise CompressionError("give at least one --artifact TARGET=PATH")
    if len(set(targets)) != len(targets):
        twice = sorted(t for t, n in Counter(targets).items() if n > 1)
        raise CompressionError(f"one artifact per target; given twice: {', '.join(twice)}")
    scratch = _Scratch(work_dir)
    opened: dict[ArtifactTarget, _Opened] = {}
    for file in files:
        notify(f"loading {file.target} ({file.path.name})")
        opened[file.target] = _open(file, scratch)
    twin = _cpu_twin(opened)
    runnable = [o for o in opened.values() if o.runner is not None]
    # a lone edgetpu artifact without its twin: nothing runs here, it is its own reference
    reference = next(
        (o for o in runnable if o.target in REFERENCE_TARGETS),
        runnable[0] if runnable else next(iter(opened.values())),
    )
    for other in opened.values():
        if other is not reference:
            _check_signatures(reference, other)
    data = check_against_signature(evaluation, reference.float_signature(), what="evaluation")
    expected: dict[str, np.ndarray] = {}
    classifier = False
    if reference.runner is not None:
        notify(f"evaluating the reference ({reference.target})")
        batch = call_batch(reference.runner.signature, data.layout, ORT_CHUNK)
        data = materialise(data, float_call(reference.runner), batch)  # sequences: single calls
        expected = run_data(reference.runner, data)
        classifier = is_classifier(expected, data.labels, task)
        _check_output_shapes(reference, runnable, data)
    ref_size = reference.file.path.stat().st_size
    described = {"import": {"reference": reference.target, "cpu_twin": twin, "task": task}}
    recipe = Recipe(targets=tuple(targets), task=task)
    result = ImportResult(
        artifacts=[],
        reference=reference.target,
        cpu_twin=twin,
        source_sha256=sha256_file(reference.file.path),
        source_size=ref_size,
        summary={"imported": [_file_summary(o) for o in opened.values()]},
    )
    for item in opened.values():
        if item.runner is None and item.evaluate_as is None:
            artifact = _unmeasured(item, described, ref_size, reference.census, classifier)
        else:
            notify(f"evaluating {item.target}")
            built = BuiltFile(
                item.target,
                item.file.path,
                {**item.details, "compared_with": reference.target},
                evaluate_as=item.evaluate_as,
            )
            evaluated = evaluate_artifact(
                built, recipe, data, expected, classifier, original_size=ref_size,
                params=reference.census.params, sparsity=reference.census.sparsity,
                settings=settings,
            )  # fmt: skip
            report = evaluated.report.model_copy(update={"recipe": described})
            artifact = replace(evaluated, report=report)
        result.artifacts.append(artifact)
        result.reports[item.target] = artifact.report
    return result


def _unmeasured(
    item: _Opened, recipe: dict[str, Any], ref_size: int, census: _Census, classifier: bool
) -> NewArtifact:
    """An edgetpu artifact without its CPU twin: no golden pairs, quality or latency to give."""
    size = item.file.path.stat().st_size
    report = ArtifactReport(
        target=item.target, runtime=runtime_for_target(item.target), size_bytes=size,
        original_size_bytes=ref_size, size_ratio=ref_size / size, param_count=census.params,
        sparsity=census.sparsity, quality=None, latency=None,
        compare=compare_mode(item.target, classifier), recipe=recipe, details=item.details,
        unmeasured=NO_TWIN,
    )  # fmt: skip
    return NewArtifact(
        target=item.target, file=item.file.path, signature=item.signature, golden=None,
        latency_budget_ms=MAX_LATENCY_MS, report=report,
    )  # fmt: skip


def import_and_register(
    registry: ModelRegistry,
    name: str,
    version: str,
    files: Sequence[PrebuiltArtifact],
    evaluation: Dataset,
    *,
    task: Task = "auto",
    settings: Settings | None = None,
    notify: Notify = quiet,
) -> VersionRecord:
    """Import ``files`` as ``name:version``; nothing is stored unless every one loaded and was
    evaluated (like :func:`~edgefleet.controller.compress.pipeline.compress_and_register`).

    Raises:
        VersionExistsError: ``name:version`` exists (checked before any work).
        CompressionError: see :func:`import_artifacts`.
    """
    if registry.has_version(name, version):
        raise VersionExistsError(name, version)
    with tempfile.TemporaryDirectory(prefix="edgefleet-import-") as tmp:
        result = import_artifacts(
            files, evaluation, task=task, settings=settings, notify=notify, work_dir=Path(tmp)
        )
        notify("registering artifacts")
        return registry.register_version(
            name,
            version,
            source_sha256=result.source_sha256,
            source_size=result.source_size,
            recipe=result.reports[result.reference].recipe,
            summary=result.summary,
            artifacts=result.artifacts,
        )


class _Scratch:
    """The directory packed files are written to, made only when one is needed."""

    def __init__(self, work_dir: Path | None) -> None:
        self._dir = work_dir

    def __call__(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="edgefleet-import-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir


# --- opening and checking one file -----------------------------------------------------------


def _open(file: PrebuiltArtifact, scratch: Callable[[], Path]) -> _Opened:
    path = file.path
    if not path.is_file():
        raise ModelLoadError(str(path), "file does not exist")
    tflite = is_tflite(path)
    if file.target.startswith("onnx-"):
        if tflite:
            raise ArtifactTargetMismatchError(
                file.target, path, "a TFLite flatbuffer, not ONNX: import it as tflite-* or edgetpu"
            )
        return _open_onnx(file, scratch)
    if not tflite:
        raise ArtifactTargetMismatchError(
            file.target, path, "not a TFLite flatbuffer (no TFL3 identifier)"
        )
    return _open_tflite(file)


def _open_onnx(file: PrebuiltArtifact, scratch: Callable[[], Path]) -> _Opened:
    try:
        onnx.load(str(file.path), load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelLoadError(str(file.path), f"not an ONNX model ({type(e).__name__})") from e
    source = onnx_source(file.path)  # external data packed in, read from beside the file only
    model = source.model
    census = _onnx_census(model)
    _check_weights(file, census)
    details: dict[str, Any] = {"imported": file.path.name}
    if source.external_data is not None:  # an artifact is one file: register the packed one
        details["external_data_packed"] = source.external_data.as_dict()
        packed = scratch() / file.target / file.path.name
        packed.parent.mkdir(parents=True, exist_ok=True)
        file = replace(file, path=save_self_contained(model, packed))
    runner = _load(file, lambda: OnnxRunner(file.path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    details |= {"format": f"ONNX opset {opset}", "weights": census.elements}
    return _Opened(file, census, runner.signature, frozenset(), {}, runner, details=details)


def _open_tflite(file: PrebuiltArtifact) -> _Opened:
    from ai_edge_litert.interpreter import Interpreter

    contents = read_tflite(file.path)
    census = _Census(contents.constants, contents.sparsity)
    tpu_ops, names = contents.edgetpu_ops, contents.io_names
    edgetpu = file.target == "edgetpu"
    if edgetpu and not tpu_ops:
        raise ArtifactTargetMismatchError(
            file.target, file.path,
            f"no {EDGETPU_CUSTOM_OP} operator: not compiled by edgetpu_compiler (import the CPU "
            "model as tflite-*)",
        )  # fmt: skip
    if tpu_ops and not edgetpu:
        raise ArtifactTargetMismatchError(
            file.target, file.path,
            f"{tpu_ops} {EDGETPU_CUSTOM_OP} operator(s): compiled for the Edge TPU, which a CPU "
            "cannot run; import it as edgetpu",
        )  # fmt: skip
    try:
        interpreter = Interpreter(model_path=str(file.path))
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(str(file.path), f"LiteRT cannot read it: {e}") from e
    io = {
        names.get(int(d["index"]), str(d["name"])): (
            dtype_name(d["dtype"]),
            tuple(int(n) for n in d.get("shape_signature", d["shape"])),
            (float(d["quantization"][0]), int(d["quantization"][1])),
        )
        for d in (*interpreter.get_input_details(), *interpreter.get_output_details())
    }
    quantized = frozenset(n for n, (dt, _, q) in io.items() if q[0] and dt.startswith(("int", "u")))
    details: dict[str, Any] = {"imported": file.path.name, "format": "TFLite"}
    if not names:  # LiteRT's default signature runner needs exactly one
        held = "none" if contents.signatures == 0 else f"{contents.signatures}, none the default,"
        details["signature"] = (
            f"{held} in the file: named by its input and output tensors, as the agent names them"
        )
    if edgetpu:
        _check_edgetpu_loads(file, interpreter)
        details |= {"edgetpu_custom_ops": tpu_ops, "cpu_ops": contents.cpu_ops}
        signature = IOSignature(
            inputs=tuple(_spec(n, io[n]) for n in _ordered(interpreter.get_input_details(), names)),
            outputs=tuple(
                _spec(n, io[n]) for n in _ordered(interpreter.get_output_details(), names)
            ),
        )
        return _Opened(file, census, signature, quantized, io, None, details=details)
    _check_weights(file, census, quantized=quantized, io=io)
    details["weights"] = census.elements
    runner = _load(file, lambda: LiteRtRunner(file.path))
    return _Opened(file, census, runner.signature, quantized, io, runner, details=details)


def _load(file: PrebuiltArtifact, opener: Callable[[], ArtifactRunner]) -> ArtifactRunner:
    try:
        runner: ArtifactRunner = opener()
    except ConversionError as e:
        raise ModelLoadError(str(file.path), f"{file.target}: {e.reason}") from e
    return runner


def _check_edgetpu_loads(file: PrebuiltArtifact, interpreter: Any) -> None:
    """LiteRT reads the whole model; only the Edge TPU's own operator may be left unresolved."""
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        if EDGETPU_CUSTOM_OP not in str(e):
            raise ModelLoadError(str(file.path), f"LiteRT cannot prepare it: {e}") from e


def _check_weights(
    file: PrebuiltArtifact,
    census: _Census,
    *,
    quantized: frozenset[str] = frozenset(),
    io: dict[str, IoTensor] | None = None,
) -> None:
    """The target names the arithmetic: int8 targets hold mostly 8-bit weights, float ones do
    not, ``onnx-fp16`` holds float16 weights, a full-integer TFLite has integer IO."""
    target, int8, fp16 = file.target, census.share("int8", "uint8"), census.share("float16")
    held = f"{int8:.0%} of its {census.params:,} weight values are 8-bit integers"
    if target in INT8_TARGETS and int8 < 0.5:
        reason = f"{target} holds int8 weights, but only {held}"
    elif target in REFERENCE_TARGETS and int8 >= 0.5:
        reason = f"{held}: import it as an int8 target"
    elif target == "onnx-fp16" and fp16 < 0.5:
        reason = f"onnx-fp16 holds float16 weights, but {fp16:.0%} of its weight values are"
    elif target == "onnx-fp32" and fp16 >= 0.5:
        reason = f"{fp16:.0%} of its weight values are float16: import it as onnx-fp16"
    elif target == "tflite-full-int8" and io is not None and set(io) - quantized:
        reason = f"float tensors at its boundary {sorted(set(io) - quantized)}: not full-integer"
    elif target in (*REFERENCE_TARGETS, "tflite-int8") and quantized:
        reason = f"quantized integer tensors at its boundary {sorted(quantized)}: import it as "
        reason += "tflite-full-int8"
    else:
        return
    raise ArtifactTargetMismatchError(target, file.path, reason)


def _cpu_twin(opened: dict[ArtifactTarget, _Opened]) -> ArtifactTarget | None:
    """Pair an edgetpu artifact with its CPU twin, if one was given; their inputs and outputs
    must be identical (edgetpu_compiler keeps the full-integer model's boundary tensors as
    they are)."""
    tpu, twin = opened.get("edgetpu"), opened.get(CPU_TWIN_TARGET)
    if tpu is None or twin is None:
        return None
    for name in sorted(set(tpu.io) | set(twin.io)):
        if tpu.io.get(name) != twin.io.get(name):
            raise SignatureMismatchError(
                "edgetpu", f"its CPU twin {CPU_TWIN_TARGET}",
                f"tensor {name!r} is {_io_text(tpu.io.get(name))} in the Edge TPU model and "
                f"{_io_text(twin.io.get(name))} in the twin",
            )  # fmt: skip
    tpu.signature = twin.signature  # the same tensors, in the order its golden pairs name them
    tpu.evaluate_as = twin.file.path
    tpu.details["evaluated_on"] = (
        f"its CPU twin {CPU_TWIN_TARGET} ({twin.file.path.name}): no Edge TPU on this machine"
    )
    return CPU_TWIN_TARGET


# --- signatures --------------------------------------------------------------------------------


def _check_signatures(reference: _Opened, other: _Opened) -> None:
    """Inputs agree by name, outputs by position (exporters rename outputs), each with the same
    rank, equal fixed dimensions and the same kind of dtype in the float domain."""
    ref, got = reference.float_signature(), other.float_signature()

    def fail(reason: str) -> SignatureMismatchError:
        return SignatureMismatchError(other.target, reference.target, reason)

    ref_in = {s.name: s for s in ref.inputs}
    got_in = {s.name: s for s in got.inputs}
    if set(ref_in) != set(got_in):
        raise fail(f"inputs {sorted(got_in)}, not {sorted(ref_in)}")
    for name, spec in ref_in.items():
        if why := _incompatible(spec, got_in[name]):
            raise fail(f"input {name!r}: {why}")
    if len(ref.outputs) != len(got.outputs):
        raise fail(f"{len(got.outputs)} outputs, not {len(ref.outputs)}")
    ref_names, got_names = [s.name for s in ref.outputs], [s.name for s in got.outputs]
    if set(ref_names) == set(got_names) and ref_names != got_names:
        raise fail(f"outputs in the order {got_names}, not {ref_names}")
    for position, (want, have) in enumerate(zip(ref.outputs, got.outputs, strict=True)):
        if why := _incompatible(want, have):
            raise fail(f"output {position} ({have.name!r} vs {want.name!r}): {why}")


def _incompatible(want: TensorSpec, have: TensorSpec) -> str | None:
    if _kind(want.dtype) != _kind(have.dtype):
        return f"dtype {have.dtype}, not {want.dtype}"
    if len(want.shape) != len(have.shape) or any(
        a is not None and b is not None and a != b
        for a, b in zip(want.shape, have.shape, strict=True)
    ):
        return f"shape {_shape(have.shape)}, not {_shape(want.shape)}"
    return None


def _check_output_shapes(reference: _Opened, runnable: list[_Opened], data: Dataset) -> None:
    """Run the first sample through every artifact: dynamic dimensions must come out equal."""
    first = data.sample_feed(0)
    assert reference.runner is not None
    want = [v.shape for v in float_call(reference.runner)(first).values()]
    for item in runnable:
        if item is reference or item.runner is None:
            continue
        got = [v.shape for v in float_call(item.runner)(first).values()]
        for position, (a, b) in enumerate(zip(want, got, strict=True)):
            if a != b:
                raise SignatureMismatchError(
                    item.target, reference.target,
                    f"output {position} of the first evaluation sample has shape {list(b)}, "
                    f"not {list(a)}",
                )  # fmt: skip


def _kind(dtype: str) -> str:
    return "float" if dtype.startswith("float") else "bool" if dtype == "bool" else "integer"


def _shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _io_text(io: IoTensor | None) -> str:
    if io is None:
        return "absent"
    dtype, shape, (scale, zero) = io
    return f"{dtype} {_shape([d if d >= 0 else None for d in shape])} (scale {scale:g}, zp {zero})"


def _spec(name: str, io: IoTensor) -> TensorSpec:
    dims = tuple(d if d > 0 else None for d in io[1])
    return TensorSpec(name=name, dtype=io[0], shape=dims)


def _ordered(details: list[dict[str, Any]], names: dict[int, str]) -> list[str]:
    return [names.get(int(d["index"]), str(d["name"])) for d in details]


def _file_summary(item: _Opened) -> dict[str, Any]:
    path = item.file.path
    return {"target": item.target, "file": path.name, "sha256": sha256_file(path),
            "size": path.stat().st_size}  # fmt: skip


# --- file contents -----------------------------------------------------------------------------


def _onnx_census(model: onnx.ModelProto) -> _Census:
    """Initializers and Constant nodes (some exporters, e.g. Paddle's, keep weights there)."""
    counts: Counter[str] = Counter()
    zeros = matrix = 0
    constants = [
        attr.t
        for node in model.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    ]
    for init in (*model.graph.initializer, *constants):
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = "other"
        size = math.prod(init.dims)
        counts[dtype] += size
        if dtype in WEIGHT_DTYPES and len(init.dims) >= 2:
            matrix += size
            zeros += int(np.count_nonzero(onnx.numpy_helper.to_array(init) == 0))
    return _Census(dict(sorted(counts.items())), zeros / matrix if matrix else 0.0)
