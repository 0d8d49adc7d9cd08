"""``edgefleet device``: broker identities (dynamic security) and agent bundles.

``init-broker`` writes the plugin's first config and the admin credentials; ``controller-identity``
creates the controller's broker login; ``enroll`` / ``revoke`` manage devices. The admin password
goes only to the broker the controller's settings name (see :mod:`..security.admin_url`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.controller.commands.render import fail
from edgefleet.controller.config import Settings, get_settings
from edgefleet.controller.private_files import ensure_private_dir
from edgefleet.controller.security.admin_url import TRUST_FLAG, admin_url_for
from edgefleet.controller.security.broker_config import (
    PRODUCTION,
    find_dynsec_plugin,
    render_mosquitto_conf,
)
from edgefleet.controller.security.bundle import (
    check_bundle_target,
    parse_labels,
    write_agent_bundle,
)
from edgefleet.controller.security.dynsec import DynsecAdmin, new_password, write_bootstrap_config
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.errors import SecurityError
from edgefleet.controller.security.identities import (
    ADMIN_USERNAME,
    BrokerIdentities,
    groups_for,
)
from edgefleet.controller.security.paths import (
    BROKER_PUBLIC_URL_ENV,
    SecurityPaths,
    default_paths,
    default_topic_root,
)
from edgefleet.controller.security.pki import certificate_names, load_ca, load_certificate
from edgefleet.controller.security.signing_key import ensure_signing_key
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.topics import Topics

device_app = typer.Typer(
    help="Devices: list and show them; enroll and revoke their broker identities and bundles."
)

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="controller data dir (default: settings)")
]
AdminUrlOption = Annotated[
    str | None,
    typer.Option(
        "--admin-url",
        help="broker URL for the dynamic-security admin (default: the settings' broker_admin_url, "
        "else broker_url); plain mqtt:// only to loopback",
    ),
]
TrustAdminUrlOption = Annotated[
    bool,
    typer.Option(
        TRUST_FLAG,
        help="send the admin password to --admin-url although the controller's settings do not "
        "name that broker",
    ),
]
TopicRootOption = Annotated[
    str | None, typer.Option("--topic-root", help="MQTT topic root (default: settings)")
]
_ERRORS = (SecurityError, InvalidTopicError)


def _private_paths(data_dir: Path | None) -> SecurityPaths:
    """The security paths, with the data dir made private (0700) if this command creates it."""
    paths = default_paths(data_dir)
    try:
        ensure_private_dir(paths.data_dir)
    except OSError as e:
        raise fail(e) from None
    return paths


def _settings(data_dir: Path | None) -> Settings:
    return get_settings(data_dir=data_dir) if data_dir is not None else get_settings()


def _admin(paths: SecurityPaths, requested: str | None, *, trust: bool) -> DynsecAdmin:
    """An admin client for the configured broker (or ``requested``, under the rules of
    :func:`admin_url_for`), checked before the password file is even read.

    Raises:
        AdminUrlRefusedError: the URL is not one the admin password may go to.
        CredentialsFileError: no admin credentials (``init-broker`` writes them).
    """
    settings = _settings(paths.data_dir)
    url = admin_url_for(
        requested,
        configured_admin=settings.broker_admin_url,
        configured_broker=settings.broker_url,
        trust_unconfigured=trust,
    )
    ca = settings.broker_ca_file or (paths.ca_cert if paths.ca_cert.exists() else None)
    endpoint = BrokerEndpoint(
        url,
        credentials=BrokerCredentials.load(paths.admin_credentials),
        ca_file=ca if url.startswith("mqtts://") else None,
    )
    return DynsecAdmin(endpoint)


def _default_broker_url(paths: SecurityPaths) -> str:
    """``mqtts://<first name of the broker certificate>:8883``."""
    dns, ips = certificate_names(load_certificate(paths.server_cert))
    host = dns[0] if dns else (f"[{ips[0]}]" if ips and ips[0].version == 6 else str(ips[0]))
    return f"mqtts://{host}:8883"


@device_app.command("init-broker")
def init_broker(
    dynsec_file: Annotated[
        Path | None,
        typer.Option(help="plugin config to write (default: <data_dir>/broker/...json)"),
    ] = None,
    mosquitto_conf: Annotated[
        Path | None, typer.Option(help="also write a mosquitto.conf for this machine here")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing plugin config")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Write the dynamic-security plugin's first config (admin identity only, deny by default).

    Copy it to where mosquitto.conf's plugin_opt_config_file points, owned by the broker user,
    before the broker's first start. The admin password stays in <data_dir>/broker/admin.json.
    """
    paths = _private_paths(data_dir)
    target = dynsec_file or paths.dynsec_bootstrap
    try:
        if paths.admin_credentials.exists():
            admin = BrokerCredentials.load(paths.admin_credentials)
        else:
            admin = BrokerCredentials(ADMIN_USERNAME, new_password())
        write_bootstrap_config(target, admin, force=force)
        admin.save(paths.admin_credentials)
    except _ERRORS as e:
        raise fail(e) from None
    typer.echo(f"dynamic-security config: {target}")
    typer.echo(f"admin credentials (0600): {paths.admin_credentials}")
    if mosquitto_conf is not None:
        plugin = find_dynsec_plugin() or PRODUCTION.dynsec_plugin
        config = replace(PRODUCTION, dynsec_plugin=plugin)
        mosquitto_conf.write_text(render_mosquitto_conf(config))
        typer.echo(f"mosquitto config: {mosquitto_conf}")


@device_app.command("controller-identity")
def controller_identity(
    topic_root: TopicRootOption = None,
    admin_url: AdminUrlOption = None,
    trust_admin_url: TrustAdminUrlOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create (or re-key) the controller's broker identity and the fleet's roles."""
    paths = _private_paths(data_dir)
    try:
        with _admin(paths, admin_url, trust=trust_admin_url) as admin:
            credentials = BrokerIdentities(
                admin, Topics(topic_root or default_topic_root())
            ).setup_controller()
        credentials.save(paths.controller_credentials)
    except _ERRORS as e:
        raise fail(e) from None
    typer.echo(f"controller identity {credentials.username!r}: {paths.controller_credentials}")


@device_app.command("enroll")
def enroll(
    device_id: Annotated[str, typer.Argument(help="the device's id")],
    labels: Annotated[str, typer.Option(help="k=v,k2=v2 (each also a broker group)")] = "",
    group: Annotated[
        list[str] | None, typer.Option("--group", help="extra group (repeatable)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="bundle directory (default: <data_dir>/bundles/<id>)")
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option(
            envvar=BROKER_PUBLIC_URL_ENV,
            help="mqtts:// URL devices use (default: the broker certificate's first name)",
        ),
    ] = None,
    device_dir: Annotated[
        Path | None,
        typer.Option(help="where the bundle will live on the device (default: --out)"),
    ] = None,
    agent_data_dir: Annotated[
        Path | None, typer.Option(help="agent data dir on the device (default: <device-dir>/data)")
    ] = None,
    client_cert: Annotated[bool, typer.Option(help="also issue a TLS client certificate")] = False,
    reenroll: Annotated[
        bool, typer.Option(help="replace an existing identity (new password)")
    ] = False,
    force: Annotated[bool, typer.Option(help="overwrite an existing bundle")] = False,
    topic_root: TopicRootOption = None,
    admin_url: AdminUrlOption = None,
    trust_admin_url: TrustAdminUrlOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create DEVICE_ID's broker identity and write its agent bundle (secrets 0600)."""
    paths = _private_paths(data_dir)
    out_dir = out or paths.bundle_dir(device_id)
    try:
        topics = Topics(topic_root or default_topic_root())
        label_map = parse_labels(labels)
        groups = groups_for(label_map, group or ())
        check_bundle_target(out_dir, force=force)
        url = broker_url or _default_broker_url(paths)
        ca = load_ca(paths.ca_cert, paths.ca_key) if client_cert else None
        ensure_signing_key(paths.signing_key, paths.signing_pub)
        with _admin(paths, admin_url, trust=trust_admin_url) as admin:
            identities = BrokerIdentities(admin, topics)
            add = identities.reenroll_device if reenroll else identities.add_device
            identity = add(device_id, groups)
            try:
                bundle = write_agent_bundle(
                    out_dir,
                    device_id=device_id,
                    credentials=identity.credentials,
                    broker_url=url,
                    ca_cert=paths.ca_cert,
                    controller_public_key=paths.signing_pub,
                    labels=label_map,
                    topic_root=topics.root,
                    device_dir=device_dir,
                    agent_data_dir=agent_data_dir,
                    client_ca=ca,
                    force=force,
                )
            except (*_ERRORS, OSError):
                identities.revoke_device(device_id)  # no identity without a bundle to use it
                raise
    except (*_ERRORS, OSError) as e:
        raise fail(e) from None
    typer.echo(f"enrolled {device_id} (groups: {', '.join(groups) or 'none'})")
    typer.echo(f"bundle: {bundle.directory}")
    typer.echo(f"on the device: edgefleet-agent run --config {bundle.device_config}")


@device_app.command("revoke")
def revoke(
    device_id: Annotated[str, typer.Argument(help="the device's id")],
    topic_root: TopicRootOption = None,
    admin_url: AdminUrlOption = None,
    trust_admin_url: TrustAdminUrlOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Delete DEVICE_ID's broker identity: its sessions drop and it can no longer connect."""
    paths = default_paths(data_dir)
    try:
        with _admin(paths, admin_url, trust=trust_admin_url) as admin:
            BrokerIdentities(admin, Topics(topic_root or default_topic_root())).revoke_device(
                device_id
            )
    except _ERRORS as e:
        raise fail(e) from None
    typer.echo(f"revoked {device_id}")
