"""A compression recipe: which optional steps run, with which settings, for which targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgefleet.controller.errors import CompressionError, UnknownTargetError
from edgefleet.shared.manifest import ARTIFACT_TARGETS, ArtifactTarget

OnnxInt8Mode = Literal["auto", "dynamic", "static"]
Task = Literal["auto", "classification", "regression"]


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation of a student from the input model (the teacher)."""

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    compare_scratch: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise CompressionError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise CompressionError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise CompressionError("distillation epochs, batch size and learning rate must be > 0")


@dataclass(frozen=True)
class Recipe:
    """Steps run in this order: distill -> structured prune -> unstructured prune -> fine-tune ->
    convert and quantize to each target. Every step is optional."""

    targets: tuple[ArtifactTarget, ...] = ("onnx-fp32",)
    distill: DistillConfig | None = None
    student_spec: str | None = None
    prune_sparsity: float = 0.0
    structured_ratio: float = 0.0
    finetune_epochs: int = 0
    finetune_learning_rate: float = 1e-3
    onnx_int8_mode: OnnxInt8Mode = "auto"
    task: Task = "auto"  # auto: classification with labels or a single [N, C>=2] float output
    per_channel: bool | None = None  # None: per channel where it helps (static int8 of convs)
    opset: int = 17
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.targets:
            raise CompressionError("a recipe needs at least one target")
        validate_targets(self.targets)
        for name, value in (("prune", self.prune_sparsity), ("structured", self.structured_ratio)):
            if not 0.0 <= value < 1.0:
                raise CompressionError(f"{name} ratio must be in [0, 1), got {value}")
        if self.finetune_epochs < 0:
            raise CompressionError(f"fine-tune epochs must be >= 0, got {self.finetune_epochs}")

    def per_channel_for(self, *, static: bool, convolutional: bool) -> bool:
        """Per-channel weight scales help static int8 of convolutions (channel ranges differ a
        lot); for dense layers they cost size (a scale per neuron) for no measurable gain."""
        if self.per_channel is not None:
            return self.per_channel
        return static and convolutional

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored with every artifact it produced."""
        return asdict(self)


def validate_targets(targets: tuple[str, ...] | list[str]) -> tuple[ArtifactTarget, ...]:
    """The targets, checked against :data:`ARTIFACT_TARGETS` and de-duplicated in order.

    Raises:
        UnknownTargetError: one target is not known.
    """
    seen: list[ArtifactTarget] = []
    for target in targets:
        if target not in ARTIFACT_TARGETS:
            raise UnknownTargetError(target, ARTIFACT_TARGETS)
        if target not in seen:
            seen.append(target)  # type: ignore[arg-type]
    return tuple(seen)


def parse_student_spec(spec: str) -> tuple[int, ...]:
    """Hidden layer widths from a CLI student spec such as ``mlp:64`` or ``mlp:128,32``.

    Raises:
        CompressionError: the spec is not of that form.
    """
    kind, _, widths = spec.partition(":")
    try:
        hidden = tuple(int(w) for w in widths.split(",") if w.strip())
    except ValueError:
        hidden = ()
    if kind != "mlp" or not hidden or any(w < 1 for w in hidden):
        raise CompressionError(
            f"student spec {spec!r} not understood; use mlp:WIDTH[,WIDTH...] such as mlp:64"
        )
    return hidden
