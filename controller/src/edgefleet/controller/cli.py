"""``edgefleet`` command line: the root Typer app that sub-apps attach to."""

from __future__ import annotations

import sys

import typer

from edgefleet.controller import __version__
from edgefleet.controller.commands import model_app
from edgefleet.controller.commands.demo import demo
from edgefleet.controller.commands.device import device_app
from edgefleet.controller.commands.fleet import list_devices, show_device
from edgefleet.controller.commands.pki import pki_app
from edgefleet.controller.commands.rollout import rollout_app
from edgefleet.controller.commands.serve import controller_app

app = typer.Typer(
    name="edgefleet",
    help="edgefleet: compress ML models and roll them out to fleets of edge devices.",
    no_args_is_help=True,
    add_completion=False,
)


app.add_typer(model_app, name="model")
app.add_typer(controller_app, name="controller")
app.add_typer(rollout_app, name="rollout")
app.add_typer(pki_app, name="pki")
device_app.command("list")(list_devices)
device_app.command("show")(show_device)
app.add_typer(device_app, name="device")
app.command("demo")(demo)


@app.callback()
def root() -> None:
    """edgefleet: compress ML models and roll them out to fleets of edge devices."""


@app.command()
def version() -> None:
    """Print the controller's version."""
    typer.echo(f"edgefleet {__version__}")


def plain_help(typer_app: typer.Typer) -> None:
    """Help as click's plain text, which wraps at the width, for this app and its sub-apps:
    rich's panels cut words with an ellipsis at the 80 columns they assume without a terminal
    (``EDGEFLEET_BROKER_PUBLI…``)."""
    typer_app.rich_markup_mode = None
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            plain_help(group.typer_instance)


def main() -> None:
    """Entry point of ``edgefleet``."""
    if not sys.stdout.isatty():
        plain_help(app)
    app()


if __name__ == "__main__":
    main()
