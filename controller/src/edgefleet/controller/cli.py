"""``edgefleet`` command line: the root Typer app that sub-apps attach to."""

from __future__ import annotations

import typer

from edgefleet.controller import __version__

app = typer.Typer(
    name="edgefleet",
    help="edgefleet: compress ML models and roll them out to fleets of edge devices.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def root() -> None:
    """edgefleet: compress ML models and roll them out to fleets of edge devices."""


@app.command()
def version() -> None:
    """Print the controller's version."""
    typer.echo(f"edgefleet {__version__}")


def main() -> None:
    """Entry point of ``edgefleet``."""
    app()
