"""The agent stays light: no web framework, torch or onnx at runtime; runtimes load lazily."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = [
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "torch",
    "onnx",
    "onnxruntime",
    "ai_edge_litert",
    "tflite_runtime",
]


def imported_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_agent_loads_no_runtime_or_framework():
    modules = imported_after(
        "import edgefleet.agent.agent, edgefleet.agent.cli, edgefleet.agent.capabilities"
    )
    assert not {m for m in modules if m.split(".")[0] in FORBIDDEN}


def test_an_onnx_model_does_not_load_litert(tmp_path):
    from support.agent_models import linear_classifier

    model = linear_classifier(tmp_path / "m.onnx", seed=1)
    code = (
        "from pathlib import Path\nfrom edgefleet.agent.runtimes.onnx import OnnxRuntimeModel\n"
        f"OnnxRuntimeModel(Path({str(model.path)!r}))"
    )
    modules = imported_after(code)
    assert "onnxruntime" in modules
    assert "ai_edge_litert" not in modules
    assert "onnx" not in modules
