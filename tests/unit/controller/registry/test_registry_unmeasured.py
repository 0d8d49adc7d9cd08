"""An artifact registered without golden pairs, quality or latency (an ``edgetpu`` one imported
without its CPU twin) comes back from SQLite and PostgreSQL as it went in, the reason with it;
a report cannot leave its figures out without saying why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from edgefleet.controller.compress import PrebuiltArtifact, import_and_register
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.prebuilt import NO_TWIN
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry import ArtifactReport, ModelRegistry, create_engine_for
from support import agent_models
from support.edgetpu_standin import edgetpu_compiler_standin


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unmeasured")
    twin = agent_models.tflite_int8_classifier(root / "model_full_int8.tflite").path
    return {
        "fp32": agent_models.linear_classifier(root / "fp32.onnx", seed=3).path,
        "edgetpu": edgetpu_compiler_standin(twin, root / "model_full_int8_edgetpu.tflite"),
    }


def test_an_unmeasured_artifact_round_trips(files, tmp_path: Path, database_url: str) -> None:
    settings = get_settings(
        data_dir=tmp_path / "data", database_url=database_url, latency_runs=5, golden_pairs=4
    )
    given = [
        PrebuiltArtifact("onnx-fp32", files["fp32"]),
        PrebuiltArtifact("edgetpu", files["edgetpu"]),
    ]
    data = Dataset({"x": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)})
    registered = import_and_register(
        ModelRegistry.from_settings(settings), "tpu", "1", given, data, settings=settings
    )
    again = ModelRegistry.from_settings(settings).get_version("tpu", "1")  # a new connection
    assert again.artifacts == registered.artifacts
    tpu = again.artifact("edgetpu")
    assert tpu is not None
    assert tpu.golden is None
    assert (tpu.report.quality, tpu.report.latency) == (None, None)
    assert tpu.report.unmeasured == NO_TWIN
    assert tpu.runtime == "edgetpu"
    assert tpu.path.read_bytes() == files["edgetpu"].read_bytes()
    assert [s.dtype for s in tpu.signature.outputs] == ["int8"]
    fp32 = again.artifact("onnx-fp32")
    assert fp32 is not None
    assert fp32.golden is not None
    assert len(fp32.golden.pairs) == 4
    # The golden column stays NOT NULL: "no pairs" is stored as the JSON value null.
    with create_engine_for(settings.effective_database_url).connect() as db:
        assert db.scalar(text("SELECT count(*) FROM artifacts WHERE golden IS NULL")) == 0


def test_a_report_without_figures_must_say_why() -> None:
    report = ArtifactReport(
        target="edgetpu", runtime="edgetpu", size_bytes=10, original_size_bytes=10,
        size_ratio=1.0, param_count=0, sparsity=0.0, quality=None, latency=None,
        compare="allclose", recipe={}, unmeasured=NO_TWIN,
    )  # fmt: skip
    with pytest.raises(ValidationError, match="or None with the reason why"):
        report.model_validate({**report.model_dump(), "unmeasured": None})
