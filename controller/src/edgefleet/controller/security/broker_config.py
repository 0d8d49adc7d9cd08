"""The mosquitto config edgefleet runs: TLS for devices, plain MQTT on loopback only, no anonymous
access, identities and ACLs in the dynamic security plugin, the shared limits included.

``deploy/mosquitto/*.conf`` are renderings of :func:`render_mosquitto_conf` (a test keeps them in
step), and the integration tests start real brokers from the same function.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

PLUGIN_NAME = "mosquitto_dynamic_security.so"
_PLUGIN_GLOBS = (
    f"/usr/lib/*-linux-gnu*/{PLUGIN_NAME}",  # Debian, Ubuntu, Raspberry Pi OS (multiarch)
    f"/usr/lib/{PLUGIN_NAME}",  # eclipse-mosquitto image, Alpine
    f"/usr/lib64/{PLUGIN_NAME}",
    f"/usr/local/lib/{PLUGIN_NAME}",
)


def find_dynsec_plugin() -> Path | None:
    """Where this machine's mosquitto keeps the dynamic security plugin, if installed."""
    for pattern in _PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The choices behind one mosquitto config file."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    dynsec_plugin: Path
    dynsec_config: Path
    persistence_dir: Path
    include_dir: Path | None = None
    tls_port: int = 8883
    tls_bind: str | None = None  # None: every interface
    plain_port: int | None = 1883  # None: no plain listener at all
    require_certificate: bool = False
    log_dest: str = "syslog"  # or "stderr"; ignored when log_file is set
    log_file: Path | None = None
    run_as: str | None = None  # None: mosquitto's default user


def render_mosquitto_conf(config: BrokerConfig) -> str:
    """The text of ``mosquitto.conf`` for ``config``."""
    lines = [
        "# edgefleet broker: MQTT over TLS for devices, plain MQTT on loopback only.",
        "# Identities and ACLs live in the dynamic security plugin (edgefleet device enroll).",
        "per_listener_settings false",
        "allow_anonymous false",
        *([f"user {config.run_as}"] if config.run_as else []),
        "",
        "# The plugin's path depends on the architecture (arm64: /usr/lib/aarch64-linux-gnu/);",
        "# `edgefleet device init-broker --mosquitto-conf FILE` renders this file for the host.",
        f"plugin {config.dynsec_plugin}",
        f"plugin_opt_config_file {config.dynsec_config}",
        "",
        "persistence true",
        f"persistence_location {config.persistence_dir}/",
        "autosave_interval 60",
        "",
        f"log_dest file {config.log_file}" if config.log_file else f"log_dest {config.log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
    ]
    if config.include_dir is not None:
        lines += [
            "# Shared limits (deploy/mosquitto/limits.conf): packet size, queues, keepalive.",
            f"include_dir {config.include_dir}",
            "",
        ]
    if config.plain_port is not None:
        lines += [
            "# Plain MQTT for the controller and admin tooling on this host only.",
            f"listener {config.plain_port} 127.0.0.1",
            "",
        ]
    bind = f" {config.tls_bind}" if config.tls_bind else ""
    require = "true" if config.require_certificate else "false"
    lines += [
        "# MQTT over TLS: devices pin the CA that signed this certificate.",
        f"listener {config.tls_port}{bind}",
        f"cafile {config.ca_file}",
        f"certfile {config.cert_file}",
        f"keyfile {config.key_file}",
        "tls_version tlsv1.2",
        "# true: devices also present a client certificate from the CA (edgefleet device enroll",
        "# --client-cert); the password is still checked, so revoking the identity revokes access.",
        f"require_certificate {require}",
        "use_identity_as_username false",
    ]
    return "\n".join(lines) + "\n"


PRODUCTION = BrokerConfig(
    ca_file=Path("/etc/mosquitto/certs/edgefleet-ca.crt"),
    cert_file=Path("/etc/mosquitto/certs/edgefleet-server.crt"),
    key_file=Path("/etc/mosquitto/certs/edgefleet-server.key"),
    dynsec_plugin=Path(f"/usr/lib/x86_64-linux-gnu/{PLUGIN_NAME}"),
    dynsec_config=Path("/var/lib/mosquitto/dynamic-security.json"),
    persistence_dir=Path("/var/lib/mosquitto"),
    include_dir=Path("/etc/mosquitto/edgefleet.d"),
)
"""Debian/Ubuntu (amd64) layout of ``deploy/mosquitto/mosquitto.conf``."""

CONTAINER = BrokerConfig(
    # The compose file's init service copies certificates and the first plugin config into the
    # data volume, owned by the image's mosquitto user.
    ca_file=Path("/mosquitto/data/certs/ca.crt"),
    cert_file=Path("/mosquitto/data/certs/server.crt"),
    key_file=Path("/mosquitto/data/certs/server.key"),
    dynsec_plugin=Path(f"/usr/lib/{PLUGIN_NAME}"),
    dynsec_config=Path("/mosquitto/data/dynamic-security.json"),
    persistence_dir=Path("/mosquitto/data"),
    include_dir=Path("/mosquitto/config/edgefleet.d"),
    plain_port=None,  # loopback inside the container reaches nobody; the controller uses TLS
    log_dest="stderr",
)
"""eclipse-mosquitto image layout of ``deploy/mosquitto/mosquitto.container.conf``."""
