"""``edgefleet model ...`` through Typer's CliRunner against one data directory, and what its
registry holds: the two steps every CLI test of compress and import repeats."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from edgefleet.controller.cli import app

runner = CliRunner()


def invoke_model(files: Mapping[str, Any], *args: str) -> Result:
    """``edgefleet model ARGS --data-dir files["data"]``."""
    return runner.invoke(app, ["model", *args, "--data-dir", str(files["data"])])


def registry_state(files: Mapping[str, Any]) -> tuple[list[Any], int]:
    """The versions ``model list`` shows, and how many artifact files the store holds."""
    listed = invoke_model(files, "list", "--json")
    assert listed.exit_code == 0, listed.output
    store = Path(files["data"]) / "artifacts"
    return json.loads(listed.stdout), sum(1 for _ in store.glob("??/*")) if store.exists() else 0
