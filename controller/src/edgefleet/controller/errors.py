"""The controller's exception hierarchy: one root, leaves that name the failure and carry
the figures that explain it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from edgefleet.shared.errors import EdgefleetError


class ControllerError(EdgefleetError):
    """Root of every error the controller raises."""


class ConfigError(ControllerError):
    """The controller's settings cannot be loaded or are inconsistent."""


# --- compression -------------------------------------------------------------------------------


class CompressionError(ControllerError):
    """The compression pipeline cannot produce what was asked."""


class ModelLoadError(CompressionError):
    """The input is missing or is not a model this pipeline can read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load model {path!r}: {reason}")
        self.path = path
        self.reason = reason


class DataMismatchError(CompressionError):
    """Calibration or evaluation data does not fit the model's inputs."""

    def __init__(
        self,
        message: str,
        *,
        expected: Sequence[str] = (),
        got: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.expected = tuple(expected)
        self.got = tuple(got)


class UnknownTargetError(CompressionError):
    """A requested artifact target is not one this pipeline knows."""

    def __init__(self, target: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown target {target!r}; known targets: {', '.join(known)}")
        self.target = target
        self.known = tuple(known)


class UnsupportedStepError(CompressionError):
    """A recipe step or target cannot apply to this kind of input (e.g. TFLite from ONNX)."""


class ToolNotFoundError(CompressionError):
    """An external tool a target needs is not installed."""

    def __init__(self, tool: str, install_hint: str) -> None:
        super().__init__(f"{tool} is not on PATH; {install_hint}")
        self.tool = tool
        self.install_hint = install_hint


class MissingPackageError(CompressionError):
    """A target needs a Python package that is not installed."""

    def __init__(self, target: str, package: str, hint: str) -> None:
        super().__init__(f"building {target} needs {package}, which is not installed: {hint}")
        self.target = target
        self.package = package
        self.hint = hint


class MissingConverterError(UnsupportedStepError):
    """No converter here takes this kind of source to this kind of target."""

    def __init__(self, targets: Sequence[str], source: str, converter: str) -> None:
        super().__init__(
            f"targets {list(targets)} from a {source} source need {converter}, which edgefleet "
            "does not have yet"
        )
        self.targets = tuple(targets)
        self.source = source
        self.converter = converter


class MissingExtraError(CompressionError):
    """An input or target needs an optional extra of the controller that is not installed
    (e.g. a Keras source, or TFLite targets from ONNX, need the ``tensorflow`` extra)."""

    def __init__(self, needed_for: str, package: str, extra: str, cause: str = "") -> None:
        self.install = f"pip install 'edgefleet-controller[{extra}]'"
        because = f" ({cause})" if cause else ""
        super().__init__(
            f"{needed_for} needs {package}, which is not installed{because}: {self.install}"
        )
        self.needed_for = needed_for
        self.package = package
        self.extra = extra
        self.cause = cause


class ConversionError(CompressionError):
    """A converter or quantizer failed on a model it should accept."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"building {target} failed: {reason}")
        self.target = target
        self.reason = reason


class QuantizationBlockedError(ConversionError):
    """One node or input of the model stops the quantizer, or the quantized model, from running."""

    def __init__(self, target: str, blocker: str, reason: str) -> None:
        super().__init__(target, f"{blocker}: {reason}")
        self.blocker = blocker  # "node 'name' (OpType)" or "input 'name'"


class UnconvertibleNodeError(ConversionError):
    """A converter cannot translate one node of the model (e.g. an ONNX operator onnx2tf has no
    conversion for)."""

    def __init__(self, target: str, converter: str, node: str, op_type: str, reason: str) -> None:
        what = f"node {node!r} ({op_type})" if op_type else f"node {node!r}"
        super().__init__(target, f"{converter} cannot convert {what}: {reason}")
        self.converter = converter
        self.node = node
        self.op_type = op_type


class ArtifactTargetMismatchError(CompressionError):
    """A prebuilt file is not what the target it is imported as says (format, weights, ops)."""

    def __init__(self, target: str, path: Path, reason: str) -> None:
        super().__init__(f"{target}={path.name}: {reason}")
        self.target = target
        self.path = path
        self.reason = reason


class SignatureMismatchError(CompressionError):
    """Two artifacts of one import disagree on their inputs or outputs."""

    def __init__(self, target: str, reference: str, reason: str) -> None:
        super().__init__(f"{target} does not match {reference}: {reason}")
        self.target = target
        self.reference = reference
        self.reason = reason


class OpsetUpgradeError(CompressionError):
    """A model below the opset onnxruntime's quantizer accepts as is cannot be upgraded without
    changing what it computes."""

    def __init__(self, target: str, from_opset: int, reason: str) -> None:
        super().__init__(
            f"building {target} failed: the model is at opset {from_opset}, onnxruntime's "
            f"quantizer needs 10 or later, and the upgrade is not possible: {reason}"
        )
        self.target = target
        self.from_opset = from_opset
        self.reason = reason


class Int8CoverageError(CompressionError):
    """An int8 target would leave the model's heavy operators in float: a copy of the float
    model under an int8 name, refused rather than registered."""

    def __init__(
        self,
        target: str,
        mode: str,
        heavy_ops: Mapping[str, int],
        quantized_ops: Mapping[str, int],
        weight_share: float,
        reason: str,
    ) -> None:
        def counts(ops: Mapping[str, int]) -> str:
            return ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "none"

        super().__init__(
            f"{target} with {mode} quantization refused: the model's heavy operators are "
            f"{counts(heavy_ops)}; {mode} quantization put int8 weights on {counts(quantized_ops)} "
            f"({weight_share:.1%} of their weight values). {reason}"
        )
        self.target = target
        self.mode = mode
        self.heavy_ops = dict(heavy_ops)
        self.quantized_ops = dict(quantized_ops)
        self.weight_share = weight_share
        self.reason = reason


# --- registry ----------------------------------------------------------------------------------


class RegistryError(ControllerError):
    """The model registry refuses a request."""


class ModelNotFoundError(RegistryError):
    def __init__(self, name: str, version: str | None = None) -> None:
        what = f"{name}:{version}" if version else name
        super().__init__(f"no model {what!r} in the registry")
        self.name = name
        self.version = version


class VersionExistsError(RegistryError):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"model {name}:{version} is already registered; pick a new version")
        self.name = name
        self.version = version


class ArtifactStoreError(RegistryError):
    """The content-addressed store is missing a blob or holds a corrupt one."""

    def __init__(self, sha256: str, reason: str) -> None:
        super().__init__(f"artifact {sha256[:12]}: {reason}")
        self.sha256 = sha256
        self.reason = reason
