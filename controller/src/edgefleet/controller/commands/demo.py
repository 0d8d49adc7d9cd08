"""``edgefleet demo``: the README's first command."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer


def demo(
    exit_after: Annotated[
        bool, typer.Option("--exit", help="exit after the scenario (0 when it behaved)")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="where the demo keeps its data (default: a new temp dir)")
    ] = None,
) -> None:
    """Run a controller, a small fleet of agents and two gated rollouts, on this machine."""
    from edgefleet.controller.demo import run_demo

    directory = data_dir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    raise typer.Exit(run_demo(directory, exit_after=exit_after))
