"""``edgefleet device list`` and ``edgefleet device show``: the fleet as the controller sees it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.controller.commands.api_client import (
    DEFAULT_URL,
    ApiClient,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    resolve_token,
)

console = Console()


def _slot(slot: dict[str, Any] | None) -> str:
    return f"{slot['model_id']}:{slot['version']} ({slot['target']})" if slot else "-"


def list_devices(
    selector: Annotated[str, typer.Option("--selector", "-s", help="e.g. site=plant-3")] = "*",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List devices matching a label selector."""
    devices = ApiClient(url, resolve_token(token)).call(
        "GET", "/api/devices", params={"selector": selector}
    )
    if as_json:
        typer.echo(json.dumps(devices, indent=2))
        return
    table = Table("device", "online", "status", "active", "runtimes", "labels", "last seen")
    for d in devices:
        table.add_row(
            d["id"], "yes" if d["online"] else "no", d["status"], _slot(d["active"]),
            ", ".join(r["name"] for r in d["runtimes"]),
            ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items())), d["last_seen"][:19],
        )  # fmt: skip
    console.print(table)


def show_device(
    device_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one device: capabilities, slots, recent events."""
    client = ApiClient(url, resolve_token(token))
    device = client.call("GET", f"/api/devices/{device_id}")
    events = client.call("GET", f"/api/devices/{device_id}/events", params={"limit": 10})
    if as_json:
        typer.echo(json.dumps({"device": device, "events": events}, indent=2))
        return
    console.print(f"[bold]{device['id']}[/] {device['status']} (online: {device['online']})")
    console.print(f"  active:   {_slot(device['active'])}")
    console.print(f"  previous: {_slot(device['previous'])}")
    console.print(f"  hardware: {device['arch']}, {device['cpu_count']} CPU")
    table = Table("at", "event", "version", "reason")
    for e in events:
        table.add_row(e["at"][:19], e["type"], e["version"] or "", (e["reason"] or "")[:70])
    console.print(table)
