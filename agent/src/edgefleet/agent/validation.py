"""Validation of a loaded model before it may serve: golden pairs, NaN/Inf, latency budget.

Pure logic over a :class:`ModelRuntime`; nothing here touches the active model.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

from edgefleet.agent.errors import InferenceError, ValidationFailedError
from edgefleet.agent.runtimes import Array, ModelRuntime
from edgefleet.shared.manifest import GoldenSet, IOSignature, Manifest, TensorData


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What validation measured; sent along with the swapped event."""

    pairs: int
    max_abs_error: float
    top1_agreement: float
    warm_latency_ms: float

    def figures(self) -> dict[str, float]:
        return {
            "golden_pairs": float(self.pairs),
            "max_abs_error": self.max_abs_error,
            "top1_agreement": self.top1_agreement,
            "warm_latency_ms": self.warm_latency_ms,
        }


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


def _compare(golden: GoldenSet, runtime: ModelRuntime) -> tuple[float, float]:
    max_abs = 0.0
    agree = total = 0
    for number, pair in enumerate(golden.pairs):
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


def validate(
    runtime: ModelRuntime, manifest: Manifest, *, warmup_runs: int = 3, timed_runs: int = 10
) -> ValidationReport:
    """Check a loaded model against its manifest; warm it up on the way.

    Raises:
        ValidationFailedError: golden mismatch, NaN/Inf outputs, a runtime failure on a golden
            input, or a median warm latency above ``manifest.latency_budget_ms``.
    """
    golden = manifest.golden
    probe = (
        {n: tensor_array(t) for n, t in golden.pairs[0].inputs.items()}
        if golden is not None
        else smoke_inputs(manifest.signature)
    )
    for _ in range(max(1, warmup_runs)):
        _check_finite(_run(runtime, probe))
    max_abs, agreement = _compare(golden, runtime) if golden is not None else (0.0, 1.0)
    samples = []
    for _ in range(max(1, timed_runs)):
        start = time.perf_counter()
        _run(runtime, probe)
        samples.append((time.perf_counter() - start) * 1000.0)
    warm_ms = statistics.median(samples)
    if not math.isfinite(warm_ms) or warm_ms > manifest.latency_budget_ms:
        raise ValidationFailedError(
            f"warm latency {warm_ms:.3f} ms exceeds the budget of {manifest.latency_budget_ms} ms",
            {"warm_latency_ms": warm_ms, "latency_budget_ms": manifest.latency_budget_ms},
        )
    return ValidationReport(len(golden.pairs) if golden else 0, max_abs, agreement, warm_ms)
