"""``edgefleet pki``: the broker's certificate authority, server and client certificates."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.controller.commands.render import fail
from edgefleet.controller.security.errors import SecurityError
from edgefleet.controller.security.paths import default_paths
from edgefleet.controller.security.pki import init_pki, issue_client_certificate, load_ca
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.topics import validate_device_id

pki_app = typer.Typer(help="Certificates for MQTT over TLS: CA, broker and client certificates.")

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="controller data dir (default: settings)")
]


def _pki_dir(out: Path | None, data_dir: Path | None) -> Path:
    return out if out is not None else default_paths(data_dir).pki_dir


@pki_app.command("init")
def init(
    host: Annotated[
        list[str] | None, typer.Option("--host", help="broker DNS name (repeatable)")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="broker IP address (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="directory (default: <data_dir>/pki)")] = None,
    force: Annotated[
        bool, typer.Option(help="replace a server certificate for other names")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create the CA (kept if it exists) and the broker's server certificate (keys 0600)."""
    directory = _pki_dir(out, data_dir)
    try:
        ips = tuple(ipaddress.ip_address(a) for a in ip or ())
    except ValueError as e:
        raise fail(e) from None
    try:
        files = init_pki(
            directory / "ca.crt",
            directory / "ca.key",
            directory / "server.crt",
            directory / "server.key",
            hosts=tuple(host or ()),
            ips=ips,
            force=force,
        )
    except SecurityError as e:
        raise fail(e) from None
    ca_state = "created" if files.created_ca else "kept"
    server_state = "created" if files.created_server else "unchanged"
    typer.echo(f"CA {ca_state}: {files.ca_cert}")
    typer.echo(f"broker certificate {server_state}: {files.server_cert} (key {files.server_key})")


@pki_app.command("client-cert")
def client_cert(
    name: Annotated[str, typer.Argument(help="common name: the device id")],
    out: Annotated[Path, typer.Option(help="directory for <name>.crt and <name>.key")],
    pki_dir: Annotated[
        Path | None, typer.Option(help="CA directory (default: <data_dir>/pki)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace existing files")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Issue a TLS client certificate signed by the CA (for brokers requiring one)."""
    directory = _pki_dir(pki_dir, data_dir)
    try:
        validate_device_id(name)
        ca = load_ca(directory / "ca.crt", directory / "ca.key")
        issue_client_certificate(ca, name, out / f"{name}.crt", out / f"{name}.key", force=force)
    except (SecurityError, InvalidTopicError) as e:
        raise fail(e) from None
    typer.echo(f"client certificate: {out / f'{name}.crt'} (key {out / f'{name}.key'})")
