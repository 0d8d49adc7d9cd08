"""``edgefleet model``: compress a model into artifacts or import prebuilt ones, list models, show a
version's reports."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from edgefleet.controller.commands.render import (
    fail,
    models_json,
    print_models,
    print_version,
    version_json,
)
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.errors import CompressionError, ControllerError
from edgefleet.controller.registry.records import VersionRecord
from edgefleet.controller.registry.service import ModelRegistry

model_app = typer.Typer(
    help="Compress models into device artifacts, import prebuilt ones, inspect the registry."
)

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="controller data dir (default: settings)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def _settings(data_dir: Path | None) -> Settings:
    return get_settings(data_dir=data_dir) if data_dir else get_settings()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A notify callback that shows each pipeline step as a spinner line with elapsed time."""
    if not enabled:
        yield lambda _: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        current: list[TaskID] = []

        def notify(step: str) -> None:
            if current:
                progress.update(current[-1], total=1, completed=1)
            current.append(progress.add_task(step, total=None))

        yield notify
        if current:
            progress.update(current[-1], total=1, completed=1)


def _check_task(task: str) -> None:
    """Raises: CompressionError: ``task`` is not one the reports know."""
    if task not in ("auto", "classification", "regression"):
        raise CompressionError(f"--task must be auto, classification or regression, not {task!r}")


def _print_record(record: VersionRecord, as_json: bool) -> None:
    """A version as JSON for scripts, else as its report tables."""
    if as_json:
        typer.echo(json.dumps(version_json(record), indent=2))
    else:
        print_version(Console(), record)


@model_app.command()
def compress(
    model: Annotated[
        Path,
        typer.Argument(
            help="ONNX, float TFLite (.tflite: tflite-* targets), TorchScript or torch.export "
            "(.pt2) file; with the tensorflow extra also a Keras .keras or .h5 file or a "
            "SavedModel directory (every target), and tflite-* targets from ONNX"
        ),
    ],
    name: Annotated[str, typer.Option(help="model name in the registry")],
    version: Annotated[str, typer.Option(help="version to register")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="artifact target")],
    eval_data: Annotated[
        Path,
        typer.Option(
            "--eval", help="held-out data .npz: inputs, optional labels and layout (see above)"
        ),
    ],
    calib: Annotated[
        Path | None, typer.Option(help="calibration data .npz (same format), never --eval's")
    ] = None,
    train: Annotated[
        Path | None, typer.Option(help="training / transfer-set data .npz (same format)")
    ] = None,
    prune: Annotated[float, typer.Option(help="pruning ratio (sparsity, or channels)")] = 0.0,
    structured: Annotated[
        bool, typer.Option("--structured", help="--prune removes channels (torch)")
    ] = False,
    distill_student: Annotated[
        str | None, typer.Option(help="student to distill, e.g. mlp:64 or mlp:128,32")
    ] = None,
    temperature: Annotated[float, typer.Option(help="distillation temperature")] = 4.0,
    alpha: Annotated[float, typer.Option(help="weight of the soft (KD) loss")] = 0.7,
    epochs: Annotated[int, typer.Option(help="distillation epochs")] = 30,
    finetune_epochs: Annotated[int, typer.Option(help="fine-tune epochs after pruning")] = 0,
    int8_mode: Annotated[str, typer.Option(help="onnx-int8: auto, dynamic or static")] = "auto",
    task: Annotated[
        str, typer.Option(help="auto, classification or regression (how outputs compare)")
    ] = "auto",
    input_name: Annotated[
        list[str] | None, typer.Option(help="torch input names in order (default: forward's)")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compress MODEL into one artifact per --target and register NAME:VERSION.

    Data files (--eval, --calib, --train) are .npz archives of arrays named as
    MODEL's inputs, samples on axis 0, and optional integer "labels" (one per
    sample). Any other layout is one JSON string entry "layout", e.g.
    np.savez(path, ..., layout=json.dumps({...})), with these keys:

    "inputs": {"state": {"batch_axis": 1}, "sr": {"whole": true}}: state holds
    samples on axis 1; sr is given as it is to every call (a scalar, a
    constant). {"whole": true, "batch_axis": 1}: one value with batch size 1
    there, repeated to each call's batch.

    "sequence": {"steps": 4, "feedback": {"state": "stateN"}}: each sample is
    4 calls. An input not whole or fed back has a step axis right after its
    batch axis (e.g. [N, 4, 576]); state holds the first call's value, then
    output stateN of the call before. Labels, if any: [N, 4].

    "outputs": {"stateN": {"batch_axis": 1}}: an output whose batch is not on
    axis 0 (a fed-back output defaults to its input's batch axis).

    Sequences are run through MODEL in float first: calibration, evaluation
    and golden pairs (state included) use the single calls that yields. Names
    "labels" and "layout" are reserved. README.md has a worked example.
    """
    from edgefleet.controller.compress.sources import TorchSource, import_torch

    try:
        import_torch("edgefleet model compress")  # the compress extra; import works without it
    except ControllerError as e:
        raise fail(e) from e
    from edgefleet.controller.compress import (
        CompressionData,
        DistillConfig,
        Recipe,
        compress_and_register,
        load_model_file,
        load_npz,
        validate_targets,
    )

    try:
        if int8_mode not in ("auto", "dynamic", "static"):
            raise CompressionError(
                f"--int8-mode must be auto, dynamic or static, not {int8_mode!r}"
            )
        _check_task(task)
        targets = validate_targets(target)
        recipe = Recipe(
            targets=targets,
            distill=(
                DistillConfig(temperature=temperature, alpha=alpha, epochs=epochs)
                if distill_student
                else None
            ),
            student_spec=distill_student,
            prune_sparsity=0.0 if structured else prune,
            structured_ratio=prune if structured else 0.0,
            finetune_epochs=finetune_epochs,
            onnx_int8_mode=int8_mode,  # type: ignore[arg-type]
            task=task,  # type: ignore[arg-type]
        )
        source = load_model_file(model)
        if isinstance(source, TorchSource) and input_name:
            source = dataclasses.replace(source, input_names=tuple(input_name))
        data = CompressionData(
            evaluation=load_npz(eval_data),
            calibration=load_npz(calib) if calib else None,
            train=load_npz(train) if train else None,
        )
        settings = _settings(data_dir)
        registry = ModelRegistry.from_settings(settings)
        with _progress(not as_json) as notify:
            record = compress_and_register(
                registry,
                name,
                version,
                source,
                recipe,
                data,
                settings=settings,
                notify=notify,
                source_file=model,
            )
    except ControllerError as e:
        raise fail(e) from e
    _print_record(record, as_json)


@model_app.command("import")
def import_model(
    ref: Annotated[str, typer.Argument(metavar="NAME:VERSION", help="version to register")],
    artifact: Annotated[
        list[str],
        typer.Option(
            "--artifact",
            "-a",
            metavar="TARGET=PATH",
            help="a file built elsewhere and its target (onnx-fp32, onnx-fp16, onnx-int8, "
            "tflite-fp32, tflite-int8, tflite-full-int8, edgetpu); repeat for each",
        ),
    ],
    eval_data: Annotated[Path, typer.Option("--eval", help="held-out .npz (inputs + labels)")],
    task: Annotated[
        str, typer.Option(help="auto, classification or regression (how outputs compare)")
    ] = "auto",
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register prebuilt artifacts as NAME:VERSION after loading and evaluating each.

    Each file must be what its target says (ONNX or TFLite, int8 or float
    weights). The first fp32 artifact (else the first given) is the reference
    the others are compared with; their signatures must agree.

    An edgetpu file (an _edgetpu.tflite, known by its edgetpu-custom-op) cannot
    run here. Give the full-integer model it was compiled from, its CPU twin,
    as --artifact tflite-full-int8=PATH: golden pairs, agreement and latency
    are measured on the twin. Without a twin they are skipped (the report says
    why) and the device checks its outputs' dtypes, shapes and finiteness only.
    --eval takes the same data files as model compress (see its --help).
    """
    from edgefleet.controller.compress import import_and_register, load_npz, parse_artifact_spec

    try:
        name, sep, version = ref.partition(":")
        if not sep or not name or not version:
            raise CompressionError(f"give the version to register as NAME:VERSION, not {ref!r}")
        _check_task(task)
        files = [parse_artifact_spec(spec) for spec in artifact]
        evaluation = load_npz(eval_data)
        settings = _settings(data_dir)
        registry = ModelRegistry.from_settings(settings)
        with _progress(not as_json) as notify:
            record = import_and_register(
                registry, name, version, files, evaluation,
                task=task, settings=settings, notify=notify,  # type: ignore[arg-type]
            )  # fmt: skip
    except ControllerError as e:
        raise fail(e) from e
    _print_record(record, as_json)


@model_app.command("list")
def list_models(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List registered models and their versions."""
    try:
        models = ModelRegistry.from_settings(_settings(data_dir)).list_models()
    except ControllerError as e:
        raise fail(e) from e
    if as_json:
        typer.echo(json.dumps(models_json(models), indent=2))
    else:
        print_models(Console(), models)


@model_app.command()
def show(
    ref: Annotated[str, typer.Argument(metavar="NAME[:VERSION]", help="latest when no version")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a model version's artifacts and their reports."""
    name, _, version = ref.partition(":")
    try:
        record = ModelRegistry.from_settings(_settings(data_dir)).get_version(name, version or None)
    except ControllerError as e:
        raise fail(e) from e
    _print_record(record, as_json)


@model_app.command()
def reference(
    name: Annotated[str, typer.Option(help="model name to register")] = "digits",
    version: Annotated[str, typer.Option(help="version to register")] = "1",
    quick: Annotated[bool, typer.Option(help="fewer epochs")] = False,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build the reference model: digits teacher, distilled + pruned student, every target."""
    from edgefleet.controller.compress.reference import build_reference_model

    try:
        with _progress(not as_json) as notify:
            record = build_reference_model(
                name=name, version=version, quick=quick, settings=_settings(data_dir),
                notify=notify,
            )  # fmt: skip
    except ControllerError as e:
        raise fail(e) from e
    _print_record(record, as_json)
