"""The CLI's client of the controller API: URL and token resolution, errors as exit codes."""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer

from edgefleet.controller.config import get_settings

DEFAULT_URL = "http://127.0.0.1:8080"


def resolve_token(explicit: str | None) -> str | None:
    """The token from ``--token``, ``EDGEFLEET_API_TOKEN``, or the local controller's token file."""
    if explicit:
        return explicit
    if env := os.environ.get("EDGEFLEET_API_TOKEN"):
        return env
    path = get_settings().token_path
    return path.read_text().strip() if path.exists() else None


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Send a request; a 4xx/5xx or an unreachable controller exits with a clear message."""
        try:
            response = self.http.request(method, path, json=json, params=params)
        except httpx.HTTPError as e:
            typer.echo(f"error: cannot reach the controller at {self.url}: {e}", err=True)
            raise typer.Exit(3) from e
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            typer.echo(f"error: {response.status_code}: {detail}", err=True)
            raise typer.Exit(1 if response.status_code < 500 else 4)
        return response.json()


# Options every command that talks to the API takes.
UrlOpt = Annotated[str, typer.Option("--url", envvar="EDGEFLEET_URL", help="controller API URL")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="API token (default: $EDGEFLEET_API_TOKEN)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
