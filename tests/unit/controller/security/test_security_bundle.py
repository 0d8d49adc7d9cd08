"""The agent bundle: a TOML the agent's settings model accepts as is, pinned files, modes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgefleet.agent.settings import load_settings
from edgefleet.controller.security.bundle import (
    check_bundle_target,
    parse_labels,
    render_agent_toml,
    write_agent_bundle,
)
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.errors import SecurityError, WouldOverwriteError
from edgefleet.controller.security.identities import groups_for
from edgefleet.controller.security.pki import create_ca, save_key_and_certificate
from edgefleet.controller.security.signing_key import ensure_signing_key
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.signing import load_public_key

CREDS = BrokerCredentials("pi-7", 'p"a\\ss=wörd')


@pytest.fixture
def sources(tmp_path) -> tuple[Path, Path]:
    ca = create_ca()
    save_key_and_certificate(ca.key, ca.certificate, tmp_path / "ca.key", tmp_path / "ca.crt")
    ensure_signing_key(tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub")
    return tmp_path / "ca.crt", tmp_path / "keys" / "signing.pub"


def _write(out, sources, **kw):
    ca_cert, pub = sources
    args = {
        "device_id": "pi-7",
        "credentials": CREDS,
        "broker_url": "mqtts://broker.example:8883",
        "ca_cert": ca_cert,
        "controller_public_key": pub,
        "labels": {"site": "plant 3", "tier": "canary"},
        "topic_root": "fleet/v1",
    }
    return write_agent_bundle(out, **{**args, **kw})


def test_bundle_is_accepted_by_the_agent_settings_as_is(tmp_path, sources):
    bundle = _write(tmp_path / "bundle", sources)
    settings = load_settings(bundle.config)
    assert settings.device_id == "pi-7"
    assert settings.broker_url == "mqtts://broker.example:8883"
    assert settings.broker_tls
    assert settings.username == "pi-7"
    assert settings.password is not None
    assert settings.password.get_secret_value() == CREDS.password
    assert settings.topic_root == "fleet/v1"
    assert settings.labels == {"site": "plant 3", "tier": "canary"}
    assert settings.tls_ca_file == bundle.ca_cert
    assert settings.tls_ca_file.read_bytes() == sources[0].read_bytes()
    assert load_public_key(settings.controller_key) == load_public_key(sources[1])
    assert settings.data_dir == bundle.directory / "data"
    assert settings.tls_cert_file is None


def test_secrets_are_0600_and_the_directory_private(tmp_path, sources):
    bundle = _write(tmp_path / "bundle", sources, client_ca=create_ca())
    assert bundle.config.stat().st_mode & 0o777 == 0o600
    assert bundle.client_key is not None
    assert bundle.client_key.stat().st_mode & 0o777 == 0o600
    assert bundle.directory.stat().st_mode & 0o777 == 0o700
    assert bundle.ca_cert.stat().st_mode & 0o777 == 0o644
    settings = load_settings(bundle.config)
    assert settings.tls_cert_file == bundle.client_cert
    assert settings.tls_key_file == bundle.client_key


def test_paths_point_where_the_bundle_will_live_on_the_device(tmp_path, sources):
    bundle = _write(
        tmp_path / "bundle",
        sources,
        device_dir=Path("/etc/edgefleet-agent"),
        agent_data_dir=Path("/var/lib/edgefleet-agent"),
    )
    values = tomllib.loads(bundle.config.read_text())
    assert values["controller_key"] == "/etc/edgefleet-agent/controller.pub"
    assert values["tls_ca_file"] == "/etc/edgefleet-agent/broker-ca.crt"
    assert values["data_dir"] == "/var/lib/edgefleet-agent"


def test_existing_bundle_is_not_overwritten_without_force(tmp_path, sources):
    out = tmp_path / "bundle"
    first = _write(out, sources).config.read_bytes()
    with pytest.raises(WouldOverwriteError):
        check_bundle_target(out, force=False)
    with pytest.raises(WouldOverwriteError):
        _write(out, sources, credentials=BrokerCredentials("pi-7", "new"))
    assert (out / "agent.toml").read_bytes() == first
    _write(out, sources, credentials=BrokerCredentials("pi-7", "new"), force=True)
    assert load_settings(out / "agent.toml").password.get_secret_value() == "new"  # type: ignore[union-attr]


def test_devices_must_use_tls(tmp_path, sources):
    with pytest.raises(SecurityError, match="TLS"):
        _write(tmp_path / "bundle", sources, broker_url="mqtt://broker.example:1883")


def test_toml_strings_survive_quotes_backslashes_and_unicode():
    text = render_agent_toml({"password": 'a"b\\c\nd'}, {"k=1": "vé"})
    assert tomllib.loads(text) == {"password": 'a"b\\c\nd', "labels": {"k=1": "vé"}}


def test_labels_parse_and_become_groups():
    labels = parse_labels("site=plant-3, tier=canary")
    assert labels == {"site": "plant-3", "tier": "canary"}
    assert groups_for(labels, ["all"]) == ("all", "site=plant-3", "tier=canary")
    assert parse_labels("") == {}
    for bad in ("site", "=x", "a=1,a=2"):
        with pytest.raises(SecurityError):
            parse_labels(bad)
    with pytest.raises(InvalidTopicError):
        groups_for({"site": "plant/3"})


def test_signing_key_is_created_once(tmp_path):
    private, public = tmp_path / "k" / "signing.key", tmp_path / "k" / "signing.pub"
    first = ensure_signing_key(private, public)
    assert private.stat().st_mode & 0o777 == 0o600
    public.unlink()
    assert ensure_signing_key(private, public) == first
    assert load_public_key(public) == first
