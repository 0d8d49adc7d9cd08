"""The agent installs and imports on a device that has none of the controller's dependencies."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTROLLER_ONLY = [
    "fastapi", "uvicorn", "sqlalchemy", "torch", "onnx", "typer", "amqtt", "cryptography",
    "pydantic_settings",
]  # fmt: skip

CHECK = textwrap.dedent(
    """
    import importlib, importlib.util, pkgutil, sys
    import edgefleet.agent, edgefleet.shared
    forbidden = {forbidden!r}
    present = [name for name in forbidden if importlib.util.find_spec(name) is not None]
    assert not present, f"controller dependencies installed in the agent venv: {{present}}"
    assert importlib.util.find_spec("edgefleet.controller") is None
    names = []
    for pkg in (edgefleet.shared, edgefleet.agent):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)
            names.append(info.name)
    loaded = sorted(n for n in forbidden if n in sys.modules)
    assert not loaded, loaded
    print(len(names), "modules imported:", " ".join(names))
    """
)


@pytest.mark.slow
def test_agent_installs_and_imports_in_a_bare_venv(tmp_path):
    venv = tmp_path / "agent-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(REPO / "shared"), str(REPO / "agent")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    result = subprocess.run(
        [str(python), "-c", CHECK.format(forbidden=CONTROLLER_ONLY)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edgefleet.agent.cli" in result.stdout
    assert "edgefleet.shared.signing" in result.stdout
    help_out = subprocess.run(
        [str(venv / "bin" / "edgefleet-agent"), "--help"], capture_output=True, text=True
    )
    assert help_out.returncode == 0
    assert "run" in help_out.stdout
