"""The compression pipeline: prune, distill, quantize and convert a model into one verified
artifact per device class, with golden pairs and an evaluation report for each; or import
artifacts built elsewhere with the same evaluation.

Names load on first use: importing artifacts built elsewhere needs neither torch (the
``compress`` extra) nor the TFLite converter (``tflite``), so nothing here imports them until a
step that needs them runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "Dataset": "data", "load_npz": "data", "kd_loss": "distill",
    "CompressionData": "pipeline", "CompressionResult": "pipeline", "compress": "pipeline",
    "compress_and_register": "pipeline",
    "ArtifactTargetMismatchError": "prebuilt", "ImportResult": "prebuilt",
    "PrebuiltArtifact": "prebuilt", "SignatureMismatchError": "prebuilt",
    "import_and_register": "prebuilt", "import_artifacts": "prebuilt",
    "parse_artifact_spec": "prebuilt",
    "DistillConfig": "recipe", "Recipe": "recipe", "validate_targets": "recipe",
    "build_reference_model": "reference",
    "ModelSource": "sources", "OnnxSource": "sources", "TorchSource": "sources",
    "load_model_file": "sources", "onnx_source": "sources", "torch_source": "sources",
}  # fmt: skip

__all__ = [
    "ArtifactTargetMismatchError", "CompressionData", "CompressionResult", "Dataset",
    "DistillConfig", "ImportResult", "ModelSource", "OnnxSource", "PrebuiltArtifact", "Recipe",
    "SignatureMismatchError", "TorchSource", "build_reference_model", "compress",
    "compress_and_register", "import_and_register", "import_artifacts", "kd_loss",
    "load_model_file", "load_npz", "onnx_source", "parse_artifact_spec", "torch_source",
    "validate_targets",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
