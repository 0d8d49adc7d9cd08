"""``edgefleet controller serve``: the MQTT side and the API in one process."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.controller.config import CONFIG_FILE_ENV, Settings, get_settings
from edgefleet.controller.http_hosts import HostNameError, is_loopback, served_hosts

log = logging.getLogger(__name__)

controller_app = typer.Typer(help="Run the controller.", no_args_is_help=True)


@controller_app.command("serve")
def serve(
    config: Annotated[
        Path | None, typer.Option(help="TOML settings file (EDGEFLEET_* env vars override it)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP bind address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="a Host name the API answers to besides loopback ones, 'name', 'name:port' or "
            "'*.domain' (repeatable; replaces the http_allowed_hosts setting)",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="largest request body read (default 1 MiB); more gets 413")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Serve the REST API and dashboard, ingest device traffic, drive rollouts.

    Without a broker URL in the settings, an embedded MQTT broker is started.
    """
    import signal

    import uvicorn

    from edgefleet.shared.lifetime import end_with_parent

    # a parent that waits for signals with them blocked passes the mask on: SIGTERM would never
    # reach uvicorn's handler
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    end_with_parent()  # uvicorn handles the SIGTERM

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
    if allowed_host:
        overrides["http_allowed_hosts"] = allowed_host
    if max_body_bytes is not None:
        overrides["http_max_body_bytes"] = max_body_bytes
    try:
        settings = get_settings(**overrides)
    except ValueError as e:  # pydantic's ValidationError names the setting and the reason
        typer.echo(f"error: bad settings: {e}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except HostNameError as e:  # public_url's host
        typer.echo(f"error: bad settings: {e}", err=True)
        raise typer.Exit(2) from None
    warn_about_exposure(settings)
    typer.echo(f"edgefleet controller: data in {settings.data_dir}")
    typer.echo(f"API and dashboard on http://{settings.http_host}:{settings.http_port}/")
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=log_level.lower(),
    )


def warn_about_exposure(settings: Settings) -> None:
    """Say what an API bound beyond loopback still lacks: Host names, TLS."""
    if is_loopback(settings.http_host):
        return
    hosts = served_hosts(settings.http_host, settings.http_allowed_hosts, settings.public_url)
    log.warning(
        "the API is bound to %s, beyond loopback: it answers only to the Host names %s "
        "(--allowed-host adds more); reads and the dashboard need the token or a session",
        settings.http_host,
        hosts,
    )
    if not (settings.public_url or "").lower().startswith("https://"):
        log.warning(
            "the API serves plain HTTP: put a TLS proxy in front and set public_url to its "
            "https:// URL (browsers keep the dashboard's Secure session cookie only over HTTPS)"
        )
