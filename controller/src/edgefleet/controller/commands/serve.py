"""``edgefleet controller serve``: the MQTT side and the API in one process."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.controller.config import CONFIG_FILE_ENV, get_settings

controller_app = typer.Typer(help="Run the controller.", no_args_is_help=True)


@controller_app.command("serve")
def serve(
    config: Annotated[
        Path | None, typer.Option(help="TOML settings file (EDGEFLEET_* env vars override it)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP bind address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Serve the REST API and dashboard, ingest device traffic, drive rollouts.

    Without a broker URL in the settings, an embedded MQTT broker is started.
    """
    import uvicorn

    from edgefleet.controller.app import create_app

    if config is not None:
        if not config.is_file():
            typer.echo(f"error: config file {config} does not exist", err=True)
            raise typer.Exit(2)
        os.environ[CONFIG_FILE_ENV] = str(config)
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["http_host"] = host
    if port is not None:
        overrides["http_port"] = port
    settings = get_settings(**overrides)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    typer.echo(f"edgefleet controller: data in {settings.data_dir}")
    typer.echo(f"API and dashboard on http://{settings.http_host}:{settings.http_port}/")
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level=log_level.lower(),
    )
