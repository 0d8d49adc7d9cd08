"""A mosquitto started from edgefleet's production config generator: TLS + loopback plain
listener, dynamic security plugin with an admin identity, anonymous access off, shared limits.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgefleet.controller.security.broker_config import (
    BrokerConfig,
    find_dynsec_plugin,
    render_mosquitto_conf,
)
from edgefleet.controller.security.dynsec import new_password, write_bootstrap_config
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.identities import ADMIN_USERNAME
from edgefleet.controller.security.pki import init_pki
from support.mosquitto import LIMITS_CONF, MosquittoProcess, free_port
from support.mqtt import MqttProbe


class SecureBroker(MosquittoProcess):
    """One mosquitto with TLS (pinned test CA), a loopback plain port and dynamic security."""

    def __init__(
        self,
        workdir: Path,
        *,
        require_certificate: bool = False,
        pki_dir: Path | None = None,
        dynsec_file: Path | None = None,
        admin: BrokerCredentials | None = None,
    ) -> None:
        """Make a CA, server certificate, admin identity and plugin config in ``workdir``, or use
        the ones ``edgefleet pki init`` / ``device init-broker`` wrote (``pki_dir``,
        ``dynsec_file`` and ``admin``)."""
        super().__init__(workdir)
        self.plain_port = free_port()
        self.tls_port = free_port()
        self.pki_dir = pki_dir or workdir / "pki"
        self.pki = init_pki(
            self.pki_dir / "ca.crt",
            self.pki_dir / "ca.key",
            self.pki_dir / "server.crt",
            self.pki_dir / "server.key",
            hosts=("localhost",),
            ips=(ip_address("127.0.0.1"),),
        )
        if dynsec_file is not None and admin is not None:
            self.admin, self.dynsec_file = admin, dynsec_file
        else:
            self.admin = BrokerCredentials(ADMIN_USERNAME, new_password())
            self.dynsec_file = workdir / "dynamic-security.json"
            write_bootstrap_config(self.dynsec_file, self.admin)
        include_dir = workdir / "edgefleet.d"
        include_dir.mkdir(exist_ok=True)
        shutil.copy(LIMITS_CONF, include_dir / "limits.conf")
        plugin = find_dynsec_plugin()
        if plugin is None:
            raise RuntimeError("mosquitto's dynamic security plugin is not installed")
        self.config = BrokerConfig(
            ca_file=self.pki.ca_cert,
            cert_file=self.pki.server_cert,
            key_file=self.pki.server_key,
            dynsec_plugin=plugin,
            dynsec_config=self.dynsec_file,
            persistence_dir=workdir,
            include_dir=include_dir,
            tls_port=self.tls_port,
            tls_bind=self.host,
            plain_port=self.plain_port,
            require_certificate=require_certificate,
            log_file=self.log_path,
            # Started as root, mosquitto would drop to "mosquitto" and lose the private temp dir.
            run_as="root" if os.geteuid() == 0 else None,
        )

    # -- endpoints ----------------------------------------------------------------------------
    @property
    def plain_url(self) -> str:
        return f"mqtt://{self.host}:{self.plain_port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{self.host}:{self.tls_port}"

    def admin_endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.plain_url, credentials=self.admin)

    def tls_endpoint(
        self,
        credentials: BrokerCredentials | None,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> BrokerEndpoint:
        return BrokerEndpoint(
            self.tls_url,
            credentials=credentials,
            ca_file=ca_file or self.pki.ca_cert,
            cert_file=cert_file,
            key_file=key_file,
        )

    # -- process ------------------------------------------------------------------------------
    @property
    def ports(self) -> tuple[int, ...]:
        return (self.plain_port, self.tls_port)

    def write_config(self) -> None:
        self.config_path.write_text(render_mosquitto_conf(self.config))


def probe(
    endpoint: BrokerEndpoint,
    *,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    will: tuple[str, bytes] | None = None,
    client_id: str | None = None,
) -> MqttProbe:
    """An :class:`MqttProbe` set up with the endpoint's credentials and TLS settings, not yet
    connected: use it as a context manager (``with probe(...) as p``)."""
    p = MqttProbe(endpoint.host, endpoint.port, protocol=protocol, client_id=client_id)
    endpoint.configure(p.client)
    if will is not None:
        p.client.will_set(will[0], will[1], qos=1, retain=True)
    return p


@dataclass
class ConnectOutcome:
    """How a connection attempt ended: accepted, refused by CONNACK, or dropped before it."""

    accepted: bool
    reason: str


def drop_connection(p: MqttProbe) -> None:
    """End a probe's connection without DISCONNECT (as a power cut would) and never reconnect."""
    p.client.loop_stop()
    sock = p.client.socket()
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def try_connect(endpoint: BrokerEndpoint, timeout: float = 5.0) -> ConnectOutcome:
    """Connect once (no retries) and report the broker's answer.

    TLS verification failures raise ``ssl.SSLError`` from here, as they do for the agent.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"try-{uuid.uuid4().hex[:10]}",
        protocol=MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )
    endpoint.configure(client)
    done = threading.Event()
    outcome = ConnectOutcome(False, "no answer")

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome.accepted = not reason.is_failure
        outcome.reason = str(reason)
        done.set()

    def on_disconnect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if not done.is_set():
            outcome.reason = f"disconnected before CONNACK: {reason}"
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect(endpoint.host, endpoint.port, keepalive=30)
    client.loop_start()
    try:
        if not done.wait(timeout):
            outcome.reason = f"no CONNACK within {timeout}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome


def tls_handshake_error(
    host: str, port: int, context: ssl.SSLContext, server_hostname: str | None = None
) -> ssl.SSLError | None:
    """The error a bare TLS handshake with ``context`` ends in, or None if it succeeds."""
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname or host),
        ):
            return None
    except ssl.SSLError as e:
        return e


def run_edgefleet(*args: str) -> str:
    """Run the ``edgefleet`` CLI in-process; fail the test with its output if it fails."""
    from typer.testing import CliRunner

    from edgefleet.controller.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def broker_from_cli(data_dir: Path, workdir: Path) -> SecureBroker:
    """What an operator does: ``edgefleet pki init`` and ``device init-broker`` into ``data_dir``,
    then a broker started from the files they wrote (not started yet)."""
    from edgefleet.controller.security.paths import SecurityPaths

    paths = SecurityPaths(data_dir)
    run_edgefleet(
        "pki", "init", "--host", "localhost", "--ip", "127.0.0.1", "--data-dir", str(data_dir)
    )
    run_edgefleet("device", "init-broker", "--data-dir", str(data_dir))
    return SecureBroker(
        workdir,
        pki_dir=paths.pki_dir,
        dynsec_file=paths.dynsec_bootstrap,
        admin=BrokerCredentials.load(paths.admin_credentials),
    )
