"""The compression pipeline: check inputs, run the recipe's steps, build and evaluate one artifact
per target, and register them. Everything is validated before anything touches the registry.
Artifacts of an ONNX, TFLite or Keras source present the source's own signature (checked)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgefleet.controller.compress.built import Notify, quiet
from edgefleet.controller.compress.convert import (
    export_onnx,
    require_edgetpu_compiler,
    require_litert_torch,
)
from edgefleet.controller.compress.data import (
    Dataset,
    InputLayout,
    SampleLayoutError,
    check_against_signature,
)
from edgefleet.controller.compress.evaluate import (
    call_batch,
    evaluate_artifact,
    float_call,
    is_classifier,
    materialise,
    run_data,
)
from edgefleet.controller.compress.external_data import PackedExternalData, save_self_contained
from edgefleet.controller.compress.keras_convert import KerasTfliteBuilder, keras_onnx_builder
from edgefleet.controller.compress.keras_source import (
    SERVING,
    KerasRunner,
    serving_model,
    source_identity,
)
from edgefleet.controller.compress.prune import (
    onnx_weight_stats,
    param_count,
    prune_unstructured_onnx,
)
from edgefleet.controller.compress.quantize import describe_failure
from edgefleet.controller.compress.recipe import Recipe
from edgefleet.controller.compress.runners import (
    ORT_CHUNK,
    ArtifactRunner,
    LiteRtRunner,
    OnnxRunner,
)
from edgefleet.controller.compress.signatures import require_same_signature
from edgefleet.controller.compress.sources import (
    KerasSource,
    ModelSource,
    OnnxSource,
    TfliteSource,
    TorchSource,
    run_torch,
    torch_signature,
)
from edgefleet.controller.compress.steps import (
    apply_torch_steps,
    distills,
    model_sparsity,
)
from edgefleet.controller.compress.targets import (
    ArtifactBuilder,
    SplitTargetBuilder,
    TargetBuilder,
    TfliteTargetBuilder,
    onnx_litert_builder,
)
from edgefleet.controller.compress.tensorflow_extra import require_onnx2tf, require_tf2onnx
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.errors import (
    CompressionError,
    ConversionError,
    DataMismatchError,
    UnsupportedStepError,
)
from edgefleet.controller.registry.records import ArtifactReport, NewArtifact, VersionRecord
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import IOSignature

LITERT_TARGETS = frozenset({"tflite-fp32", "tflite-int8", "tflite-full-int8", "edgetpu"})


@dataclass(frozen=True)
class CompressionData:
    """Held-out evaluation data (required), calibration and training/transfer data (optional)."""

    evaluation: Dataset
    calibration: Dataset | None = None
    train: Dataset | None = None


@dataclass
class CompressionResult:
    """Artifact files in a work directory, ready to register, and what the steps measured."""

    artifacts: list[NewArtifact]
    summary: dict[str, Any]
    source_sha256: str
    source_size: int
    signature: IOSignature
    reports: dict[str, ArtifactReport] = field(default_factory=dict)


def compress(
    source: ModelSource,
    recipe: Recipe,
    data: CompressionData,
    work_dir: Path,
    *,
    student: nn.Module | None = None,
    settings: Settings | None = None,
    notify: Notify = quiet,
) -> CompressionResult:
    """Run ``recipe`` on ``source`` and build every target into ``work_dir``.

    Raises:
        DataMismatchError: data names, shapes or dtypes do not fit the model.
        UnsupportedStepError: a step or target does not apply to this kind of input.
        ToolNotFoundError: a target needs a tool that is not installed (``edgetpu``).
        MissingExtraError: LiteRT targets from ONNX, or ONNX targets from TFLite, without the
            ``tensorflow`` extra.
        SignatureMismatchError: an artifact's inputs or outputs differ from the source's.
        CompressionError: any other step failure (each leaf carries its figures).
    """
    settings = settings or get_settings()
    _check_recipe_fits(source, recipe, student)
    if "edgetpu" in recipe.targets:
        require_edgetpu_compiler()
    _check_calibration(recipe, data)
    work_dir.mkdir(parents=True, exist_ok=True)
    serving = None
    if isinstance(source, KerasSource):
        notify(f"reading the {source.format} model's serving signature")
        serving = serving_model(source, work_dir)
        signature = serving.signature
    elif isinstance(source, OnnxSource | TfliteSource):
        signature = source.signature
    else:
        signature = torch_signature(source, data.evaluation)
    data = _checked(data, signature, torch=isinstance(source, TorchSource))
    notify("evaluating the original model")
    sequence = _sequence_summary(data.evaluation)
    source_runner = KerasRunner(serving) if serving is not None else None
    data = _materialised(source, data, signature, source_runner)
    builder: ArtifactBuilder
    source_sha: str | None = None
    calibration = data.calibration or data.train
    if isinstance(source, KerasSource):
        assert serving is not None
        assert source_runner is not None
        reference = _run_source(source_runner, data.evaluation)
        source_sha, source_size = source_identity(source.path)
        # Sizes compare with the weights: a .keras file also holds optimizer state, a SavedModel
        # its graphs; neither is what a device would run.
        original_size = serving.weight_bytes
        params, sparsity = serving.params, serving.sparsity
        summary = {
            "source_format": source.format,
            "serving_signature": SERVING,
            "source_bytes": source_size,
            "size_baseline": f"the model's weights, {original_size:,} bytes (the source "
            f"holds its graph, metadata and any optimizer state too: {source_size:,} bytes)",
            "original_params": params,
            "final_params": params,
        }
        builder = SplitTargetBuilder(
            onnx=partial(
                keras_onnx_builder, work_dir, serving, recipe, calibration, data.evaluation
            ),
            litert=lambda _: KerasTfliteBuilder(work_dir, serving, calibration),
        )
    elif isinstance(source, TfliteSource):
        reference = _run_source(LiteRtRunner(source.path), data.evaluation)
        source_path: Path = source.path
        params, sparsity = source.params, source.contents.sparsity
        summary = {
            "source_format": "TFLite",
            "source_weights": dict(source.contents.constants),
            "original_params": params,
            "final_params": params,
        }
        builder = TfliteTargetBuilder(
            work_dir, source.path, calibration, recipe=recipe, check=data.evaluation
        )
    elif isinstance(source, OnnxSource):
        reference = _run_source(OnnxRunner(source.path), data.evaluation)
        fp32_path, summary, params, sparsity = _onnx_working_model(source, recipe, work_dir)
        source_path = source.path
        onnx_builder = TargetBuilder(
            work_dir, fp32_path, recipe, calibration, check=data.evaluation
        )
        builder = SplitTargetBuilder(
            onnx=lambda _: onnx_builder,
            litert=partial(onnx_litert_builder, work_dir, fp32_path, calibration, data.evaluation),
        )
    else:
        reference = run_torch(source.module, source.input_names, data.evaluation.inputs)
        outputs = len(reference)
        source_path = export_onnx(
            source.module, source.input_names, data.evaluation.inputs, outputs,
            work_dir / "original.onnx", opset=recipe.opset,
        )  # fmt: skip
        working, summary = apply_torch_steps(
            source, recipe, evaluation=data.evaluation, train=data.train,
            student=student, notify=notify,
        )  # fmt: skip
        notify("exporting to ONNX")
        fp32_path = export_onnx(
            working, source.input_names, data.evaluation.inputs, outputs,
            work_dir / "model-fp32.onnx", opset=recipe.opset,
        )  # fmt: skip
        eager = source.eager or distills(recipe, student)
        params, sparsity = param_count(working), model_sparsity(working, eager=eager)
        builder = TargetBuilder(
            work_dir, fp32_path, recipe, calibration,
            module=working, input_names=source.input_names,
            sample=data.evaluation.sample_feed(0), check=data.evaluation,
        )  # fmt: skip
    if sequence:
        summary["sequence"] = sequence
    if source_sha is None:
        external = source.external_data if isinstance(source, OnnxSource) else None
        source_sha, source_size = source_digest(source_path, external), source_path.stat().st_size
        original_size = source_size
    if isinstance(source, OnnxSource) and source.external_data is not None:
        original_size = source_size + source.external_data.bytes  # the weights beside it count
    classifier = is_classifier(reference, data.evaluation.labels, recipe.task)
    result = CompressionResult(
        artifacts=[],
        summary=summary,
        source_sha256=source_sha,
        source_size=source_size,
        signature=signature,
    )
    for target in recipe.targets:
        built = builder.build(target, notify)
        notify(f"evaluating {target}")
        artifact = evaluate_artifact(
            built, recipe, data.evaluation, reference, classifier,
            original_size=original_size, params=params, sparsity=sparsity, settings=settings,
        )  # fmt: skip
        if not isinstance(source, TorchSource):  # a torch model's signature comes from its data
            require_same_signature(target, signature, artifact.signature)
        result.artifacts.append(artifact)
        result.reports[target] = artifact.report
    return result


def compress_and_register(
    registry: ModelRegistry,
    name: str,
    version: str,
    source: ModelSource,
    recipe: Recipe,
    data: CompressionData,
    *,
    student: nn.Module | None = None,
    settings: Settings | None = None,
    notify: Notify = quiet,
    source_file: Path | None = None,
) -> VersionRecord:
    """Compress ``source`` and register ``name:version`` with one artifact per target.

    Nothing is written to the registry or its store unless every target was built and evaluated.

    Raises:
        VersionExistsError: ``name:version`` exists (checked before any work).
        CompressionError: see :func:`compress`.
    """
    from edgefleet.controller.errors import VersionExistsError

    if registry.has_version(name, version):
        raise VersionExistsError(name, version)
    with tempfile.TemporaryDirectory(prefix="edgefleet-compress-") as tmp:
        result = compress(
            source, recipe, data, Path(tmp), student=student, settings=settings, notify=notify
        )
        source_sha, source_size = result.source_sha256, result.source_size
        if source_file is not None and source_file.is_file():  # a directory: the result's digest
            external = source.external_data if isinstance(source, OnnxSource) else None
            source_sha = source_digest(source_file, external)
            source_size = source_file.stat().st_size
        notify("registering artifacts")
        return registry.register_version(
            name,
            version,
            source_sha256=source_sha,
            source_size=source_size,
            recipe=recipe.as_dict(),
            summary=result.summary,
            artifacts=result.artifacts,
        )


def source_digest(path: Path, external: PackedExternalData | None = None) -> str:
    """The sha256 a version records for its source: of the file, or, for an ONNX model with
    external data, of the graph file and each data file its tensors were read from (in the
    order read, each named and sized), so changed weights beside an unchanged graph change it.
    """
    if external is None or not external.files:
        return sha256_file(path)
    digest = hashlib.sha256(b"edgefleet-onnx-with-external-data\n")
    for name, file in [(path.name, path)] + [(n, path.parent / n) for n in external.files]:
        digest.update(f"{name}\n{file.stat().st_size}\n{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _check_recipe_fits(source: ModelSource, recipe: Recipe, student: nn.Module | None) -> None:
    """Refuse, before any work, steps and targets this kind of input cannot take.

    Raises:
        UnsupportedStepError: a step this kind of source cannot take (naming what to give).
        MissingExtraError: LiteRT targets from ONNX, or ONNX targets from TFLite, without the
            tensorflow extra; LiteRT targets from torch without the tflite extra.
    """
    if isinstance(source, KerasSource):
        if recipe.prune_sparsity > 0 or recipe.structured_ratio > 0 or distills(recipe, student):
            raise UnsupportedStepError(
                f"pruning and distillation need an ONNX or torch model; {source.format} input "
                "supports conversion and quantization (every onnx-* and tflite-* target)"
            )
        if recipe.finetune_epochs > 0:
            raise UnsupportedStepError("fine-tuning needs a torch model")
        return
    if isinstance(source, TfliteSource):
        onnx_targets = sorted(t for t in recipe.targets if t.startswith("onnx-"))
        if recipe.prune_sparsity > 0 or recipe.structured_ratio > 0 or distills(recipe, student):
            raise UnsupportedStepError(
                "pruning and distillation need an ONNX or torch model; TFLite input supports "
                "quantization and conversion (tflite-*, edgetpu, and onnx-* with the tensorflow "
                "extra)"
            )
        if onnx_targets:  # converted by tf2onnx (the tensorflow extra)
            require_tf2onnx(f"converting a TFLite model to {', '.join(onnx_targets)}")
        if recipe.finetune_epochs > 0:
            raise UnsupportedStepError("fine-tuning needs a torch model")
        return
    if isinstance(source, TorchSource):
        litert_targets = sorted(LITERT_TARGETS & set(recipe.targets))
        if litert_targets:  # converted by litert-torch (the tflite extra)
            require_litert_torch(f"targets {', '.join(litert_targets)} from a torch model")
        if source.eager or distills(recipe, student):
            return  # a distilled student is an ordinary module whatever the teacher was
        if recipe.structured_ratio > 0 or recipe.finetune_epochs > 0:
            raise UnsupportedStepError(
                f"structured pruning and fine-tuning need an ordinary nn.Module (Python API); a "
                f"{source.description} file does not expose its layers"
            )
        torch_only = sorted(LITERT_TARGETS & set(recipe.targets))
        if source.kind == "torchscript" and torch_only:
            raise UnsupportedStepError(
                f"targets {torch_only} are converted with litert-torch, which needs torch.export: "
                "give a torch.export (.pt2) file or an nn.Module, not TorchScript"
            )
        return
    litert = sorted(LITERT_TARGETS & set(recipe.targets))
    if litert:  # converted by onnx2tf (the tensorflow extra), quantized by ai-edge-quantizer
        require_onnx2tf(f"converting an ONNX model to {', '.join(litert)}")
    if recipe.structured_ratio > 0 or distills(recipe, student):
        raise UnsupportedStepError(
            "structured pruning and distillation need a torch model; ONNX input supports "
            "unstructured pruning and quantization"
        )
    if recipe.finetune_epochs > 0:
        raise UnsupportedStepError("fine-tuning needs a torch model")


def _check_calibration(recipe: Recipe, data: CompressionData) -> None:
    """Static int8 targets calibrate on calibration or training data, never on held-out data."""
    needs = {"tflite-full-int8", "edgetpu"} & set(recipe.targets)
    if recipe.onnx_int8_mode == "static" and "onnx-int8" in recipe.targets:
        needs.add("onnx-int8 (static)")
    if needs and data.calibration is None and data.train is None:
        verb = "needs" if len(needs) == 1 else "need"
        raise CompressionError(
            f"{', '.join(sorted(needs))} {verb} calibration data (--calib DATA.npz, or --train); "
            "evaluation data is held out and never used to calibrate"
        )


def _checked(data: CompressionData, signature: IOSignature, *, torch: bool) -> CompressionData:
    def check(ds: Dataset | None, what: str) -> Dataset | None:
        if ds is None:
            return None
        if torch:
            _require_batch_first(ds, what)
        return check_against_signature(ds, signature, what=what)

    evaluation = check(data.evaluation, "evaluation")
    if evaluation is None:
        raise DataMismatchError("evaluation data is required")
    return replace(
        data,
        evaluation=evaluation,
        calibration=check(data.calibration, "calibration"),
        train=check(data.train, "training"),
    )


def _require_batch_first(data: Dataset, what: str) -> None:
    """A torch model is exported with axis 0 of every input and output as its batch.

    Raises:
        SampleLayoutError: naming the first input or output laid out otherwise.
    """
    why = (
        "a torch model is exported with axis 0 of every input and output as the batch, so its "
        "data must be batch-first (sequences with fed-back state included); export it to ONNX "
        "for any other layout"
    )
    for name, spec in data.layout.inputs.items():
        if spec != InputLayout():
            how = "whole" if spec.whole else f"on batch_axis {spec.batch_axis}"
            raise SampleLayoutError(f"input {name!r}", f"of the {what} data is {how}: {why}")
    for name, axis in data.layout.outputs.items():
        if axis != 0:
            raise SampleLayoutError(
                f"output {name!r}", f"of the {what} data is on batch_axis {axis}: {why}"
            )


def _sequence_summary(evaluation: Dataset) -> dict[str, Any]:
    sequence = evaluation.layout.sequence
    if sequence is None:
        return {}
    return {
        "sequences": evaluation.size,
        "steps": sequence.steps,
        "calls": evaluation.calls,
        "feedback": dict(sequence.feedback),
        "fed_back_from": "the source model (float), call by call",
    }


def _materialised(
    source: ModelSource,
    data: CompressionData,
    signature: IOSignature,
    source_runner: ArtifactRunner | None,
) -> CompressionData:
    """Sequence data as single calls, each fed-back input holding what the source model (in
    float) output on the call before: what calibration, evaluation and golden pairs use.

    Raises:
        DataMismatchError: the source model fails on the data (naming the node or input), or a
            fed-back output does not fit its input.
    """
    given = (data.evaluation, data.calibration, data.train)
    if not any(ds is not None and ds.layout.sequence is not None for ds in given):
        return data
    if source_runner is not None:
        call = float_call(source_runner)
    elif isinstance(source, OnnxSource):
        call = float_call(OnnxRunner(source.path))
    elif isinstance(source, TfliteSource):
        call = float_call(LiteRtRunner(source.path))
    else:
        assert isinstance(source, TorchSource)  # a Keras source comes with its runner
        call = partial(run_torch, source.module, source.input_names)

    def flat(ds: Dataset | None, what: str) -> Dataset | None:
        if ds is None or ds.layout.sequence is None:
            return ds
        try:
            return materialise(ds, call, call_batch(signature, ds.layout, ORT_CHUNK))
        except ConversionError as e:
            raise _rejected(e, what) from e

    return replace(
        data,
        evaluation=flat(data.evaluation, "evaluation") or data.evaluation,
        calibration=flat(data.calibration, "calibration"),
        train=flat(data.train, "training"),
    )


def _run_source(runner: ArtifactRunner, evaluation: Dataset) -> dict[str, np.ndarray]:
    """The source model's outputs on the evaluation data.

    Raises:
        DataMismatchError: the model fails on the data, naming the node or input where.
    """
    try:
        return run_data(runner, evaluation)
    except ConversionError as e:
        raise _rejected(e, "evaluation") from e


def _rejected(error: ConversionError, what: str) -> DataMismatchError:
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
    blocker, text = describe_failure(cause)
    where = f" at {blocker}" if blocker else ""
    return DataMismatchError(f"the model rejects the {what} data{where}: {text}")


def _onnx_working_model(
    source: OnnxSource, recipe: Recipe, work: Path
) -> tuple[Path, dict[str, Any], int, float]:
    model = source.model
    summary: dict[str, Any] = {}
    if recipe.prune_sparsity > 0:
        model = prune_unstructured_onnx(model, recipe.prune_sparsity)
    params, sparsity = onnx_weight_stats(model)
    if recipe.prune_sparsity > 0:
        summary["unstructured_pruning"] = {
            "target_sparsity": recipe.prune_sparsity,
            "sparsity": sparsity,
        }
    summary["original_params"] = summary["final_params"] = params
    if source.external_data is not None:
        summary["external_data_packed"] = source.external_data.as_dict()
    # the onnx-fp32 artifact, and the file every other ONNX target is built from: one file
    path = save_self_contained(model, work / "model-fp32.onnx")
    return path, summary, params, sparsity
