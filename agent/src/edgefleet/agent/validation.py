"""Validation of a loaded model before it may serve: golden pairs (else the signed outputs'
dtypes and shapes), NaN/Inf, latency.

Latency is judged here, on the device, never against a figure from the controller host: a
schema-2 manifest's :class:`LatencyPolicy` names the operator's budget for this device's class,
else a ratio to the active model's warm latency measured now on this device, else the candidate
is accepted and what it measured is reported. A schema-1 manifest has its absolute budget only.
Only the active model's runtime is borrowed (to time it); nothing here changes what serves.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgefleet.agent.errors import (
    InferenceError,
    StoppingError,
    TooSlowError,
    ValidationFailedError,
)
from edgefleet.agent.runtimes import Array, ModelRuntime
from edgefleet.shared.bounds import MAX_LATENCY_MS
from edgefleet.shared.manifest import GoldenSet, IOSignature, Manifest, TensorData


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What validation measured; sent along with the swapped event."""

    pairs: int
    max_abs_error: float
    top1_agreement: float
    warm_latency_ms: float
    latency: dict[str, float] | None = None  # how latency was judged (see judge_latency)

    def figures(self) -> dict[str, float]:
        return {
            "golden_pairs": float(self.pairs),
            "max_abs_error": self.max_abs_error,
            "top1_agreement": self.top1_agreement,
            "warm_latency_ms": self.warm_latency_ms,
            **(self.latency or {}),
        }


@dataclass(frozen=True, slots=True)
class Baseline:
    """The active model, to time against a candidate on this device."""

    runtime: ModelRuntime
    signature: IOSignature


def tensor_array(tensor: TensorData) -> Array:
    """A wire tensor as a numpy array (little-endian, C order)."""
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    return np.frombuffer(tensor.raw(), dtype=dtype).reshape(tensor.shape).astype(tensor.dtype)


def smoke_inputs(signature: IOSignature) -> dict[str, Array]:
    """Zero inputs of the signed shapes, dynamic dimensions set to 1."""
    return {
        spec.name: np.zeros([1 if d is None else d for d in spec.shape], dtype=spec.dtype)
        for spec in signature.inputs
    }


def _check_stop(stop: threading.Event | None) -> None:
    """Raises: StoppingError: the agent is stopping (validation is cut short, not failed)."""
    if stop is not None and stop.is_set():
        raise StoppingError("the agent is stopping")


def _run(runtime: ModelRuntime, inputs: dict[str, Array]) -> dict[str, Array]:
    try:
        return runtime.run(inputs)
    except InferenceError as e:
        raise ValidationFailedError(f"the model failed on a validation input: {e}") from e


def _check_finite(outputs: dict[str, Array]) -> None:
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise ValidationFailedError(
                f"output {name!r} holds NaN/Inf in {bad} of {np.size(value)} values",
                {"non_finite_values": float(bad)},
            )


def _check_signature(outputs: dict[str, Array], signature: IOSignature) -> None:
    """Without golden pairs all that can be checked is that every signed output came out with
    its signed dtype and a shape that fits (dynamic dimensions accept any size)."""
    for spec in signature.outputs:
        value = outputs.get(spec.name)
        if value is None:
            raise ValidationFailedError(
                f"output {spec.name!r} of the signed signature was not produced "
                f"(got {sorted(outputs)})"
            )
        fits = len(value.shape) == len(spec.shape) and all(
            d is None or d == n for d, n in zip(spec.shape, value.shape, strict=True)
        )
        if str(value.dtype) != spec.dtype or not fits:
            signed = ["N" if d is None else d for d in spec.shape]
            raise ValidationFailedError(
                f"output {spec.name!r} is {value.dtype} {list(value.shape)}, the signed "
                f"signature says {spec.dtype} {signed}"
            )


def _compare(
    golden: GoldenSet, runtime: ModelRuntime, stop: threading.Event | None = None
) -> tuple[float, float]:
    max_abs = 0.0
    agree = total = 0
    for number, pair in enumerate(golden.pairs):
        _check_stop(stop)
        outputs = _run(runtime, {n: tensor_array(t) for n, t in pair.inputs.items()})
        _check_finite(outputs)
        for name, tensor in pair.outputs.items():
            expected = tensor_array(tensor).astype(np.float64)
            got = outputs.get(name)
            if got is None or got.shape != expected.shape:
                shape = None if got is None else list(got.shape)
                raise ValidationFailedError(
                    f"golden pair {number}: output {name!r} has shape {shape}, "
                    f"expected {list(expected.shape)}"
                )
            got64 = got.astype(np.float64)
            error = float(np.max(np.abs(got64 - expected))) if expected.size else 0.0
            max_abs = max(max_abs, error)
            if golden.compare == "allclose" and not np.allclose(
                got64, expected, atol=golden.atol, rtol=golden.rtol
            ):
                raise ValidationFailedError(
                    f"golden output mismatch in pair {number}, output {name!r}: max abs error "
                    f"{error:.6g} exceeds atol {golden.atol} + rtol {golden.rtol}",
                    {"max_abs_error": error, "atol": golden.atol, "rtol": golden.rtol},
                )
            if golden.compare == "top1":
                got_top = np.argmax(got64.reshape(-1, got64.shape[-1]), axis=-1)
                want_top = np.argmax(expected.reshape(-1, expected.shape[-1]), axis=-1)
                agree += int(np.sum(got_top == want_top))
                total += int(want_top.size)
    agreement = agree / total if total else 1.0
    if golden.compare == "top1" and agreement < golden.min_top1_agreement:
        raise ValidationFailedError(
            f"golden top-1 agreement {agreement:.3f} is below {golden.min_top1_agreement}",
            {"top1_agreement": agreement, "min_top1_agreement": golden.min_top1_agreement},
        )
    return max_abs, agreement


def _warm_ms(
    runtime: ModelRuntime, inputs: dict[str, Array], runs: int, stop: threading.Event | None = None
) -> float:
    samples = []
    for _ in range(max(1, runs)):
        _check_stop(stop)
        start = time.perf_counter()
        _run(runtime, inputs)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def _fits(signature: IOSignature, inputs: dict[str, Array]) -> bool:
    if {spec.name for spec in signature.inputs} != set(inputs):
        return False
    for spec in signature.inputs:
        value = inputs[spec.name]
        if str(value.dtype) != spec.dtype or len(value.shape) != len(spec.shape):
            return False
        if any(d is not None and d != n for d, n in zip(spec.shape, value.shape, strict=True)):
            return False
    return True


def judge_latency(
    manifest: Manifest,
    warm_ms: float,
    probe: dict[str, Array],
    baseline: Baseline | None,
    timed_runs: int,
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """How the candidate's warm latency on this device is judged; its figures.

    Raises:
        TooSlowError: over the operator's budget, or over the allowed ratio to the active model.
        StoppingError: ``stop`` was set while the active model was timed.
    """
    policy = manifest.latency
    budget = policy.budget_ms if policy is not None else None
    if policy is None and manifest.latency_budget_ms < MAX_LATENCY_MS:
        budget = manifest.latency_budget_ms  # schema 1: its absolute budget alone
    figures = {"warm_latency_ms": warm_ms}
    if policy is not None and policy.reference_p95_ms is not None:
        figures["controller_p95_ms"] = policy.reference_p95_ms  # a reference, never a budget
    if not math.isfinite(warm_ms):
        raise TooSlowError(f"warm latency is not finite ({warm_ms})", figures)
    if budget is not None:
        figures["latency_budget_ms"] = budget
        if warm_ms > budget:
            raise TooSlowError(
                f"too slow on this device: warm latency {warm_ms:.3f} ms exceeds the budget of "
                f"{budget:g} ms for its class",
                figures,
            )
        return figures
    ratio = policy.max_ratio_to_active if policy is not None else None
    if ratio is None or baseline is None:
        return figures  # nothing to judge against: accepted, and reported
    inputs = probe if _fits(baseline.signature, probe) else smoke_inputs(baseline.signature)
    try:
        _run(baseline.runtime, inputs)  # warm (it serves, but maybe not these shapes)
        active_ms = _warm_ms(baseline.runtime, inputs, timed_runs, stop)
    except ValidationFailedError:
        return figures  # the active model cannot be timed: accepted, and reported
    figures |= {"active_warm_latency_ms": active_ms, "max_ratio_to_active": ratio}
    allowed = max(policy.floor_ms if policy is not None else 0.0, ratio * active_ms)
    if warm_ms > allowed:
        raise TooSlowError(
            f"too slow on this device: warm latency {warm_ms:.3f} ms is over {ratio:g}x the "
            f"active model's {active_ms:.3f} ms measured here",
            figures,
        )
    return figures


def validate(
    runtime: ModelRuntime,
    manifest: Manifest,
    *,
    golden: GoldenSet | None = None,
    baseline: Baseline | None = None,
    warmup_runs: int = 3,
    timed_runs: int = 10,
    stop: threading.Event | None = None,
) -> ValidationReport:
    """Check a loaded model against its manifest; warm it up on the way.

    ``golden`` is the manifest's golden set when it travels as a file (schema 2); ``baseline``
    the active model, for a latency ratio.

    Without golden pairs (an ``edgetpu`` artifact with no CPU twin to compute them on), zero
    inputs of the signed shapes are run and the outputs are checked for their signed dtype,
    shape and finiteness only.

    Raises:
        ValidationFailedError: golden mismatch, NaN/Inf outputs, an output off its signed dtype
            or shape (without golden pairs), or a runtime failure on a validation input.
        TooSlowError: the latency policy refuses it (see :func:`judge_latency`).
        StoppingError: ``stop`` was set (checked between runs): neither passed nor failed.
    """
    golden = manifest.golden if golden is None else golden
    probe = (
        {n: tensor_array(t) for n, t in golden.pairs[0].inputs.items()}
        if golden is not None
        else smoke_inputs(manifest.signature)
    )
    for _ in range(max(1, warmup_runs)):
        _check_stop(stop)
        outputs = _run(runtime, probe)
        _check_finite(outputs)
    if golden is None:
        _check_signature(outputs, manifest.signature)  # shape, dtype and finiteness only
    max_abs, agreement = _compare(golden, runtime, stop) if golden is not None else (0.0, 1.0)
    warm_ms = _warm_ms(runtime, probe, timed_runs, stop)
    latency = judge_latency(manifest, warm_ms, probe, baseline, timed_runs, stop)
    pairs = len(golden.pairs) if golden else 0
    return ValidationReport(pairs, max_abs, agreement, warm_ms, latency)
