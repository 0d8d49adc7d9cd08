"""Running models over data and evaluating built artifacts: sequences of calls turned into single
calls by a model feeding its own state back, outputs joined along their batch axes, quality
against labels and the original model (per call, and over whole sequences), golden pairs the
agent validates with, the latency of one call and the budget suggested from it."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np

from edgefleet.controller.compress.built import BuiltFile
from edgefleet.controller.compress.data import (
    Call,
    Dataset,
    FeedbackError,
    InputLayout,
    Layout,
    SampleLayoutError,
    SequenceRun,
)
from edgefleet.controller.compress.recipe import Recipe
from edgefleet.controller.compress.runners import (
    ORT_CHUNK,
    Arrays,
    ArtifactRunner,
    measuring_host,
    open_runner,
)
from edgefleet.controller.compress.sources import dtype_name
from edgefleet.controller.config import Settings
from edgefleet.controller.registry.records import (
    ArtifactReport,
    LatencyStats,
    NewArtifact,
    QualityStats,
)
from edgefleet.shared.manifest import (
    GoldenPair,
    GoldenSet,
    IOSignature,
    TensorData,
    runtime_for_target,
)

QUANTIZED_TARGETS = frozenset({"onnx-int8", "tflite-int8", "tflite-full-int8", "edgetpu"})


def is_classifier(reference: Arrays, labels: np.ndarray | None, task: str = "auto") -> bool:
    """Compare by top-1? Yes for classification; in ``auto``, when there is one float output of
    shape [N, C>=2] (or labels were given)."""
    if task != "auto":
        return task == "classification"
    if len(reference) != 1:
        return False
    out = next(iter(reference.values()))
    shaped = out.ndim == 2 and out.shape[1] >= 2 and np.issubdtype(out.dtype, np.floating)
    return shaped or (labels is not None and out.ndim == 2)


def quality_stats(
    reference: Arrays,
    produced: Arrays,
    labels: np.ndarray | None,
    *,
    classifier: bool,
    samples: int | None = None,
) -> QualityStats:
    """Accuracy (when labelled), top-1 agreement (classifiers) and errors against the original,
    over ``samples`` (default: the first output's first dimension).

    Outputs are matched by position: exporters may rename them.
    """
    ref_list = list(reference.values())
    out_list = list(produced.values())
    errors = output_errors(reference, produced).values()
    max_abs = max((e["max_abs_error"] for e in errors), default=0.0)
    max_rel = max((e["max_rel_error"] for e in errors), default=0.0)
    accuracy = original_accuracy = delta = agreement = None
    if classifier:
        ref_top1 = ref_list[0].argmax(axis=-1)
        top1 = out_list[0].argmax(axis=-1)
        agreement = float((top1 == ref_top1).mean())
        if labels is not None:
            accuracy = float((top1 == labels).mean())
            original_accuracy = float((ref_top1 == labels).mean())
            delta = 100.0 * (accuracy - original_accuracy)
    return QualityStats(
        samples=int(ref_list[0].shape[0]) if samples is None else samples,
        accuracy=accuracy,
        original_accuracy=original_accuracy,
        accuracy_delta_pt=delta,
        top1_agreement=agreement,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
    )


def output_errors(reference: Arrays, produced: Arrays) -> dict[str, dict[str, float]]:
    """Max abs and relative (to the original's peak) error of each output, by the original's
    names; outputs are matched by position."""
    errors = {}
    for (name, ref), out in zip(reference.items(), produced.values(), strict=True):
        diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
        scale = float(np.abs(ref).max(initial=0.0)) or 1.0
        errors[name] = {"max_abs_error": diff, "max_rel_error": diff / scale}
    return errors


def compare_mode(target: str, classifier: bool) -> Literal["allclose", "top1"]:
    return "top1" if classifier and target in QUANTIZED_TARGETS else "allclose"


def golden_set(
    runner: ArtifactRunner,
    data: Dataset,
    *,
    target: str,
    classifier: bool,
    count: int,
) -> GoldenSet:
    """Golden pairs from the first ``count`` samples of single-call data, each one call at batch
    1 as the device replays it (a state or scalar input included): native inputs and what
    *this* artifact outputs for them, with a comparison suited to the artifact's arithmetic."""
    n = min(count, data.size)
    calls = [runner.to_native(data.sample_feed(i)) for i in range(n)]
    outputs = [runner.run_native(native) for native in calls]
    pairs = tuple(
        GoldenPair(
            inputs={k: _tensor(v) for k, v in native.items()},
            outputs={k: _tensor(v) for k, v in out.items()},
        )
        for native, out in zip(calls, outputs, strict=True)
    )
    mode = compare_mode(target, classifier)
    if mode == "top1":
        # Integer kernels differ a little between CPUs; allow one close call to flip.
        return GoldenSet(pairs=pairs, compare="top1", min_top1_agreement=max(0.0, (n - 1) / n))
    atol, rtol = _tolerances(target, [v for out in outputs for v in out.values()])
    return GoldenSet(pairs=pairs, compare="allclose", atol=atol, rtol=rtol)


def _tolerances(target: str, outputs: list[np.ndarray]) -> tuple[float, float]:
    peak = max(float(np.abs(v.astype(np.float64)).max(initial=0.0)) for v in outputs)
    if target == "onnx-fp16":
        return max(1e-2, 1e-2 * peak), 1e-2
    if target in QUANTIZED_TARGETS:
        if any(np.issubdtype(v.dtype, np.integer) for v in outputs):
            return 2.0, 0.0  # two quantization steps of an int8 output
        return max(1e-2, 0.05 * peak), 0.05
    return max(1e-4, 1e-5 * peak), 1e-3


def latency_budget_ms(p95_ms: float, factor: float, floor_ms: float) -> float:
    """This machine's p95 times ``factor``, at least ``floor_ms``: a budget an edge CPU meets."""
    return round(max(floor_ms, p95_ms * factor), 3)


def _tensor(arr: np.ndarray) -> TensorData:
    contiguous = np.ascontiguousarray(arr)
    little = contiguous.astype(contiguous.dtype.newbyteorder("<"), copy=False)
    return TensorData.from_raw(
        dtype_name(arr.dtype), tuple(int(d) for d in arr.shape), little.tobytes()
    )


def call_batch(signature: IOSignature, layout: Layout, limit: int) -> int:
    """How many samples one call may carry: ``limit`` when every batch axis is dynamic, else 1."""
    for spec in signature.inputs:
        axis = layout.input(spec.name).batch_axis
        if axis is not None and (axis >= len(spec.shape) or spec.shape[axis] is not None):
            return 1
    return limit


def run_calls(data: Dataset, call: Call, batch: int) -> Arrays:
    """Every output of ``call`` over single-call data, in batches of up to ``batch`` samples,
    joined along each output's batch axis.

    Raises:
        SampleLayoutError: an output has no batch axis where the layout says (names it).
    """
    parts = [(count, call(feed)) for count, feed in data.batches(batch)]
    joined: Arrays = {}
    for name in parts[0][1]:
        axis = data.layout.output_axis(name)
        for count, outputs in parts:
            arr = outputs[name]
            if arr.ndim <= axis or arr.shape[axis] != count:
                raise SampleLayoutError(
                    f"output {name!r}",
                    f"has shape {list(arr.shape)} for a call of {count} sample(s): no batch "
                    f'axis {axis} of that size (declare its batch_axis in the layout\'s "outputs")',
                )
        joined[name] = np.concatenate([outputs[name] for _, outputs in parts], axis=axis)
    return joined


def materialise(data: Dataset, call: Call, batch: int) -> Dataset:
    """Single-call data from sequence data: every call of every sequence, in order (sequence by
    sequence), each fed-back input holding what ``call`` output on the call before. What
    ``call`` output on every call is kept in ``origin``. Other data is returned as it is.

    Raises:
        FeedbackError: a fed-back output is missing or does not have its input's shape.
        SampleLayoutError: an output has no batch axis where the layout says.
    """
    layout, sequence = data.layout, data.layout.sequence
    if sequence is None:
        return data
    size, steps = data.size, sequence.steps
    fed_axes = {fed: layout.input(fed).batch_axis or 0 for fed in sequence.feedback}
    state = {
        fed: np.repeat(data.inputs[fed], size, axis=axis)
        if layout.input(fed).whole
        else data.inputs[fed]
        for fed, axis in fed_axes.items()
    }
    out_axes = {name: layout.output_axis(name) for name in sequence.feedback.values()}
    step_layout = Layout(
        inputs={**layout.inputs, **{fed: InputLayout(axis) for fed, axis in fed_axes.items()}},
        outputs={**out_axes, **layout.outputs},
    )
    per_call = [n for n in data.inputs if layout.stepped(n) or n in state]
    inputs_by_step: dict[str, list[np.ndarray]] = {name: [] for name in per_call}
    outputs_by_step: list[Arrays] = []
    for step in range(steps):
        arrays = {}
        for name, arr in data.inputs.items():
            if name in state:
                arrays[name] = state[name]
            elif layout.stepped(name):
                arrays[name] = np.take(arr, step, axis=(layout.input(name).batch_axis or 0) + 1)
            else:
                arrays[name] = arr
        outputs = run_calls(Dataset(arrays, layout=step_layout), call, batch)
        for fed, output in sequence.feedback.items():
            state[fed] = _fed_back(outputs, output, fed, arrays[fed], size)
        for name in per_call:
            inputs_by_step[name].append(arrays[name])
        outputs_by_step.append(outputs)
    flat = dict(data.inputs)
    for name, values in inputs_by_step.items():
        flat[name] = _interleave(values, layout.input(name).batch_axis or 0)
    axes = {name: step_layout.output_axis(name) for name in outputs_by_step[0]}
    outputs = {
        name: _interleave([o[name] for o in outputs_by_step], axis) for name, axis in axes.items()
    }
    labels = data.labels
    if labels is not None:
        labels = labels.reshape((size * steps, *labels.shape[2:]))
    flat_layout = Layout(
        inputs={**layout.inputs, **{fed: InputLayout(axis) for fed, axis in fed_axes.items()}},
        outputs=axes,
    )
    return Dataset(flat, labels, flat_layout, origin=SequenceRun(data, outputs))


def _fed_back(outputs: Arrays, output: str, fed: str, current: np.ndarray, size: int) -> np.ndarray:
    if output not in outputs:
        raise FeedbackError(
            f"output {output!r}",
            f"is fed back to input {fed!r}, but the model's outputs are {sorted(outputs)}",
        )
    value = outputs[output]
    if value.shape != current.shape:
        raise FeedbackError(
            f"output {output!r}",
            f"has shape {list(value.shape)} for {size} samples, input {fed!r} takes "
            f"{list(current.shape)}: a fed-back output needs its input's shape",
        )
    return value.astype(current.dtype, copy=False)


def _interleave(values: list[np.ndarray], axis: int) -> np.ndarray:
    """Per-step arrays of N samples on ``axis`` -> N * steps samples on it, sequence by sequence."""
    stacked = np.stack(values, axis=axis + 1)
    shape = stacked.shape
    return stacked.reshape((*shape[:axis], shape[axis] * shape[axis + 1], *shape[axis + 2 :]))


def float_call(runner: ArtifactRunner) -> Call:
    """One call of ``runner`` in the original model's domain (float in, float out)."""

    def call(feed: Arrays) -> Arrays:
        return runner.to_float(runner.run_native(runner.to_native(feed)))

    return call


def run_data(runner: ArtifactRunner, data: Dataset) -> Arrays:
    """Float outputs of ``runner`` on single-call data, in as few calls as it takes."""
    batch = call_batch(runner.signature, data.layout, ORT_CHUNK)
    return run_calls(data, float_call(runner), batch)


def closed_loop(runner: ArtifactRunner, run: SequenceRun, *, classifier: bool) -> dict[str, Any]:
    """``runner`` over whole sequences, its own outputs fed back, against the original model's
    ``run``: how far its state carries it from the original over the steps. Outputs are matched
    by position, as in :func:`quality_stats`, so an artifact may name them differently."""
    sequences = run.sequences
    sequence = sequences.layout.sequence
    names = list(run.outputs)
    inner = float_call(runner)

    def call(feed: Arrays) -> Arrays:
        return dict(zip(names, inner(feed).values(), strict=True))

    batch = call_batch(runner.signature, sequences.layout, ORT_CHUNK)
    own = materialise(sequences, call, batch).origin
    if sequence is None or own is None:
        return {}  # not a sequence: nothing runs closed-loop
    stats = quality_stats(
        run.outputs, own.outputs, None, classifier=classifier, samples=sequences.calls
    )
    figures: dict[str, Any] = {
        "sequences": sequences.size,
        "steps": sequence.steps,
        "feedback": dict(sequence.feedback),
        "closed_loop_max_abs_error": stats.max_abs_error,
        "closed_loop_max_rel_error": stats.max_rel_error,
    }
    if stats.top1_agreement is not None:
        figures["closed_loop_top1_agreement"] = stats.top1_agreement
    if len(run.outputs) > 1:
        figures["closed_loop_output_errors"] = output_errors(run.outputs, own.outputs)
    return figures


def time_call(runner: ArtifactRunner, native: Arrays, runs: int, warmup: int = 5) -> LatencyStats:
    """Mean, median and p95 wall time of ``runs`` calls with exactly the ``native`` inputs given
    (one sample: a state or scalar input is not sliced), after a warm-up."""
    feed = {k: np.ascontiguousarray(v) for k, v in native.items()}
    for _ in range(warmup):
        runner.run_native(feed)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        runner.run_native(feed)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return LatencyStats(
        runtime=runner.runtime,
        runs=runs,
        mean_ms=float(times.mean()),
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        host=measuring_host(),
    )


def evaluate_artifact(
    built: BuiltFile,
    recipe: Recipe,
    evaluation: Dataset,
    reference: dict[str, np.ndarray],
    classifier: bool,
    *,
    original_size: int,
    params: int,
    sparsity: float,
    settings: Settings,
) -> NewArtifact:
    """Evaluate one built artifact against the original's ``reference`` outputs on single-call
    ``evaluation`` data: quality, golden pairs, latency on this host (labelled with it) and its
    report, ready to register. Data materialised from sequences is also run sequence by
    sequence with the artifact's own state fed back (``details["sequence"]``)."""
    runtime = runtime_for_target(built.target)
    runner = open_runner(built.evaluate_as or built.path, runtime)
    produced = run_data(runner, evaluation)
    quality = quality_stats(
        reference, produced, evaluation.labels, classifier=classifier, samples=evaluation.size
    )
    golden = golden_set(
        runner, evaluation, target=built.target, classifier=classifier,
        count=settings.golden_pairs,
    )  # fmt: skip
    latency = time_call(runner, runner.to_native(evaluation.sample_feed(0)), settings.latency_runs)
    details = dict(built.details)
    if len(reference) > 1:
        details["output_errors"] = output_errors(reference, produced)
    if evaluation.origin is not None:  # sequences: also run whole, the artifact's state fed back
        details["sequence"] = closed_loop(runner, evaluation.origin, classifier=classifier)
    size = built.path.stat().st_size
    report = ArtifactReport(
        target=built.target,
        runtime=runtime,
        size_bytes=size,
        original_size_bytes=original_size,
        size_ratio=original_size / size,
        param_count=params,
        sparsity=sparsity,
        quality=quality,
        latency=latency,
        compare=compare_mode(built.target, classifier),
        recipe=recipe.as_dict(),
        details=details,
    )
    return NewArtifact(
        target=built.target,
        file=built.path,
        signature=runner.signature,
        golden=golden,
        latency_budget_ms=latency_budget_ms(
            latency.p95_ms, settings.latency_budget_factor, settings.min_latency_budget_ms
        ),
        report=report,
    )
