"""The model page of a real controller for a version whose ``edgetpu`` artifact was imported
without its CPU twin (a stand-in for an edgetpu_compiler output, ``support.edgetpu_standin``):
its row has no figures, says it was not measured, and the page gives the reason."""

from __future__ import annotations

import html

import httpx
import numpy as np

from edgefleet.controller.compress import PrebuiltArtifact, import_and_register
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.prebuilt import NO_TWIN
from edgefleet.controller.config import get_settings
from edgefleet.controller.registry import ModelRegistry
from support import agent_models
from support.edgetpu_standin import edgetpu_compiler_standin


def test_model_page_shows_an_unmeasured_artifact_with_the_reason(start_controller, tmp_path):
    controller = start_controller()
    twin = agent_models.tflite_int8_classifier(tmp_path / "model_full_int8.tflite").path
    given = [
        PrebuiltArtifact("onnx-fp32", agent_models.linear_classifier(tmp_path / "m.onnx", 3).path),
        PrebuiltArtifact("edgetpu", edgetpu_compiler_standin(twin, tmp_path / "m_edgetpu.tflite")),
    ]
    data = Dataset({"x": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)})
    settings = get_settings(data_dir=controller.data_dir, latency_runs=5)
    import_and_register(
        ModelRegistry.from_settings(settings), "coral", "1", given, data, settings=settings
    )

    response = httpx.get(f"{controller.url}/dashboard/models/coral", timeout=10)
    assert response.status_code == 200, response.text
    page = response.text
    rows = {
        cells[0]: cells
        for row in page.split("<tr")[1:]
        if (cells := [c.split(">", 1)[1].split("</td")[0] for c in row.split("<td")[1:]])
    }
    assert set(rows) == {"onnx-fp32", "edgetpu"}
    tpu = rows["edgetpu"]
    assert tpu[1] == "edgetpu"
    assert tpu[4:9] == ["—"] * 5  # accuracy Δ, agreement, max |error|, p50, p95
    assert tpu[9] == "not measured"
    assert "—" not in rows["onnx-fp32"][6:9]  # measured: error, p50, p95
    assert f"edgetpu not measured: {html.escape(NO_TWIN)}" in page
    listing = httpx.get(f"{controller.url}/dashboard/models", timeout=10)
    assert listing.status_code == 200
    assert "coral" in listing.text
