"""Every artifact of a version presents its source's signature: the same input names, the same
outputs in the same order, the same shapes (dynamic where the source's are), the same dtypes
(quantized integers at the boundary of integer-only targets excepted). Converters rename and
reorder tensors; what a device's application feeds must not depend on the target it got."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.controller.errors import ConversionError, SignatureMismatchError
from edgefleet.shared.manifest import IOSignature, TensorSpec

# Targets whose boundary holds quantized integers in place of the source's floats.
INTEGER_IO_TARGETS = frozenset({"tflite-full-int8", "edgetpu"})
_QUANTIZED = frozenset({"int8", "uint8"})


def require_same_signature(
    target: str, source: IOSignature, artifact: IOSignature, *, reference: str = "the source"
) -> None:
    """Refuse ``artifact`` unless it presents ``source``'s signature (see the module).

    Raises:
        SignatureMismatchError: naming the first input or output that differs and how.
    """

    def fail(reason: str) -> SignatureMismatchError:
        return SignatureMismatchError(target, reference, reason)

    want_in = {s.name: s for s in source.inputs}
    have_in = {s.name: s for s in artifact.inputs}
    if set(want_in) != set(have_in):
        raise fail(f"inputs {sorted(have_in)}, not {sorted(want_in)}")
    for name, spec in want_in.items():
        if why := _differs(target, spec, have_in[name]):
            raise fail(f"input {name!r}: {why}")
    want_out = [s.name for s in source.outputs]
    have_out = [s.name for s in artifact.outputs]
    if want_out != have_out:
        raise fail(f"outputs {have_out}, not {want_out} (names and order must agree)")
    for want, have in zip(source.outputs, artifact.outputs, strict=True):
        if why := _differs(target, want, have):
            raise fail(f"output {want.name!r}: {why}")


def _differs(target: str, want: TensorSpec, have: TensorSpec) -> str | None:
    if tuple(want.shape) != tuple(have.shape):
        return f"shape {shape_text(have.shape)}, not {shape_text(want.shape)}"
    quantized = (
        target in INTEGER_IO_TARGETS and want.dtype.startswith("float") and have.dtype in _QUANTIZED
    )
    if want.dtype != have.dtype and not quantized:
        return f"dtype {have.dtype}, not {want.dtype}"
    return None


def shape_text(shape: Sequence[int | None]) -> str:
    """``[N, 3, 224, 224]``: N for a dynamic dimension."""
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def peak_relative_error(ref: np.ndarray, out: np.ndarray) -> float:
    """The largest absolute difference relative to the reference's peak magnitude."""
    diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    return diff / (float(np.abs(ref.astype(np.float64)).max(initial=0.0)) or 1.0)


def conversion_errors(
    reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *, target: str, source: str
) -> dict[str, tuple[float, float]]:
    """Max abs and relative (to the peak) error of each output of a converted model against its
    ``source`` model's, by name.

    Raises:
        ConversionError: an output's shape differs from the source model's.
    """
    errors = {}
    for name, ref in reference.items():
        out = got[name]
        if out.shape != ref.shape:
            raise ConversionError(
                target,
                f"output {name!r} has shape {shape_text(out.shape)}, the {source} model's "
                f"{shape_text(ref.shape)}",
            )
        diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
        errors[name] = (diff, peak_relative_error(ref, out))
    return errors
