"""The agent bundle: everything ``edgefleet-agent run --config DIR/agent.toml`` needs on a device.

Files: ``agent.toml`` (holds the broker password, 0600), ``controller.pub`` (the pinned manifest
key), ``broker-ca.crt`` (the pinned broker CA) and, optionally, ``client.crt``/``client.key``.
Paths inside ``agent.toml`` are absolute for where the bundle will live on the device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.controller.security._filewrite import (
    PUBLIC_MODE,
    SECRET_MODE,
    refuse_overwrite,
    write_file,
)
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.errors import SecurityError
from edgefleet.controller.security.pki import CertificateAuthority, issue_client_certificate
from edgefleet.shared.topics import DEFAULT_ROOT, Topics, validate_device_id

CONFIG_NAME = "agent.toml"
CONTROLLER_KEY_NAME = "controller.pub"
CA_NAME = "broker-ca.crt"
CLIENT_CERT_NAME = "client.crt"
CLIENT_KEY_NAME = "client.key"


@dataclass(frozen=True, slots=True)
class AgentBundle:
    """Where a written bundle's files are (on this machine), and where its config will be on
    the device (``device_config``: under ``--device-dir``, else the same path)."""

    directory: Path
    config: Path
    controller_key: Path
    ca_cert: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    device_config: Path | None = None


def check_bundle_target(out_dir: Path, *, force: bool) -> None:
    """Fail early (before a broker identity is made) if ``out_dir`` already holds a bundle.

    Raises:
        WouldOverwriteError: it does and ``force`` is off.
    """
    names = (CONFIG_NAME, CONTROLLER_KEY_NAME, CA_NAME, CLIENT_CERT_NAME, CLIENT_KEY_NAME)
    refuse_overwrite([out_dir / name for name in names], force=force)


def parse_labels(text: str) -> dict[str, str]:
    """``"site=plant-3,tier=canary"`` -> ``{"site": "plant-3", "tier": "canary"}``.

    Raises:
        SecurityError: an item is not ``key=value`` or a key repeats.
    """
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise SecurityError(f"label {item!r} is not key=value")
        if key in labels:
            raise SecurityError(f"label {key!r} is given twice")
        labels[key] = value
    return labels


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(value, ensure_ascii=False)


def render_agent_toml(values: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """TOML with string values only and a ``labels`` inline table."""
    lines = [f"{key} = {_toml_string(value)}" for key, value in values.items()]
    pairs = ", ".join(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in labels.items())
    lines.append(f"labels = {{ {pairs} }}" if pairs else "labels = {}")
    return "\n".join(lines) + "\n"


def write_agent_bundle(
    out_dir: Path,
    *,
    device_id: str,
    credentials: BrokerCredentials,
    broker_url: str,
    ca_cert: Path,
    controller_public_key: Path,
    labels: Mapping[str, str] | None = None,
    topic_root: str = DEFAULT_ROOT,
    device_dir: Path | None = None,
    agent_data_dir: Path | None = None,
    client_ca: CertificateAuthority | None = None,
    force: bool = False,
) -> AgentBundle:
    """Write a device's bundle into ``out_dir``.

    Args:
        out_dir: where to write the files now.
        device_dir: where the files will be on the device (default: ``out_dir``, so the bundle
            works as is on this machine); paths in ``agent.toml`` point there.
        agent_data_dir: the agent's data directory (default: ``<device_dir>/data``).
        client_ca: when given, also issue a client certificate for brokers that require one.
        force: replace an existing bundle.

    Raises:
        WouldOverwriteError: ``out_dir`` already holds a bundle and ``force`` is off.
        SecurityError: the broker URL is not mqtts:// or a source file is missing.
        InvalidTopicError: bad device id or topic root.
    """
    validate_device_id(device_id)
    Topics(topic_root)
    if not broker_url.startswith("mqtts://"):
        raise SecurityError(f"devices must reach the broker over TLS; got {broker_url!r}")
    for source in (ca_cert, controller_public_key):
        if not source.is_file():
            raise SecurityError(f"{source} does not exist")
    out_dir = out_dir.absolute()
    there = (device_dir or out_dir).absolute()
    bundle = AgentBundle(
        directory=out_dir,
        config=out_dir / CONFIG_NAME,
        device_config=there / CONFIG_NAME,
        controller_key=out_dir / CONTROLLER_KEY_NAME,
        ca_cert=out_dir / CA_NAME,
        client_cert=out_dir / CLIENT_CERT_NAME if client_ca else None,
        client_key=out_dir / CLIENT_KEY_NAME if client_ca else None,
    )
    written = [bundle.config, bundle.controller_key, bundle.ca_cert]
    refuse_overwrite(
        written + [p for p in (bundle.client_cert, bundle.client_key) if p], force=force
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o700)
    values = {
        "device_id": device_id,
        "broker_url": broker_url,
        "topic_root": topic_root,
        "controller_key": str(there / CONTROLLER_KEY_NAME),
        "tls_ca_file": str(there / CA_NAME),
        "data_dir": str(agent_data_dir or there / "data"),
        "username": credentials.username,
        "password": credentials.password,
    }
    if client_ca is not None and bundle.client_cert and bundle.client_key:
        issue_client_certificate(
            client_ca, device_id, bundle.client_cert, bundle.client_key, force=True
        )
        values["tls_cert_file"] = str(there / CLIENT_CERT_NAME)
        values["tls_key_file"] = str(there / CLIENT_KEY_NAME)
    write_file(bundle.controller_key, controller_public_key.read_bytes(), PUBLIC_MODE)
    write_file(bundle.ca_cert, ca_cert.read_bytes(), PUBLIC_MODE)
    write_file(bundle.config, render_agent_toml(values, labels or {}).encode(), SECRET_MODE)
    return bundle
