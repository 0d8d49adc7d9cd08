"""Typer sub-apps of the ``edgefleet`` command line."""

from edgefleet.controller.commands.model import model_app

__all__ = ["model_app"]
