"""Which artifact variant a device can run: pure, from its capabilities and what was built."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# Most preferred first. An Edge TPU device prefers the compiled model; int8 beats float on
# every CPU target; ONNX is preferred where both runtimes exist (one fewer runtime in memory).
PREFERENCE = (
    "edgetpu",
    "onnx-int8",
    "tflite-full-int8",
    "tflite-int8",
    "onnx-fp16",
    "onnx-fp32",
    "tflite-fp32",
)
LITERT_RUNTIMES = frozenset({"litert", "tflite_runtime"})


@dataclass(frozen=True, slots=True)
class VariantChoice:
    target: str | None
    reason: str

    @property
    def skipped(self) -> bool:
        return self.target is None


def can_run(target: str, runtimes: Collection[str], accelerators: Collection[str]) -> bool:
    """Whether a device with these runtimes and accelerators can execute ``target``."""
    if target == "edgetpu":
        return "edgetpu" in accelerators and bool(LITERT_RUNTIMES & set(runtimes))
    if target.startswith("tflite-"):
        return bool(LITERT_RUNTIMES & set(runtimes))
    if target.startswith("onnx-"):
        return "onnxruntime" in runtimes
    return False


def select_artifact_for(
    runtimes: Collection[str], accelerators: Collection[str], built_targets: Collection[str]
) -> VariantChoice:
    """Pick the most preferred built target the device can run, or say why none fits."""
    for target in PREFERENCE:
        if target in built_targets and can_run(target, runtimes, accelerators):
            return VariantChoice(target, f"runs {target} with {sorted(runtimes)}")
    built = ", ".join(sorted(built_targets)) or "none"
    return VariantChoice(
        None,
        f"no built artifact ({built}) runs on a device with runtimes {sorted(runtimes) or 'none'} "
        f"and accelerators {sorted(accelerators) or 'none'}",
    )
