"""The compression pipeline: prune, distill, quantize and convert a model into one verified
artifact per device class, with golden pairs and an evaluation report for each; or import
artifacts built elsewhere with the same evaluation."""

from edgefleet.controller.compress.data import Dataset, load_npz
from edgefleet.controller.compress.distill import kd_loss
from edgefleet.controller.compress.pipeline import (
    CompressionData,
    CompressionResult,
    compress,
    compress_and_register,
)
from edgefleet.controller.compress.prebuilt import (
    ArtifactTargetMismatchError,
    ImportResult,
    PrebuiltArtifact,
    SignatureMismatchError,
    import_and_register,
    import_artifacts,
    parse_artifact_spec,
)
from edgefleet.controller.compress.recipe import DistillConfig, Recipe, validate_targets
from edgefleet.controller.compress.reference import build_reference_model
from edgefleet.controller.compress.sources import (
    ModelSource,
    OnnxSource,
    TorchSource,
    load_model_file,
    onnx_source,
    torch_source,
)

__all__ = [
    "ArtifactTargetMismatchError", "CompressionData", "CompressionResult", "Dataset",
    "DistillConfig", "ImportResult", "ModelSource", "OnnxSource", "PrebuiltArtifact", "Recipe",
    "SignatureMismatchError", "TorchSource", "build_reference_model", "compress",
    "compress_and_register", "import_and_register", "import_artifacts", "kd_loss",
    "load_model_file", "load_npz", "onnx_source", "parse_artifact_spec", "torch_source",
    "validate_targets",
]  # fmt: skip
