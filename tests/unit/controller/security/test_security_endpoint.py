"""Broker endpoints and stored credentials."""

from __future__ import annotations

import ssl

import pytest

from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.errors import CredentialsFileError, SecurityError
from edgefleet.controller.security.pki import create_ca, save_key_and_certificate


def test_credentials_round_trip_0600_and_hide_the_password(tmp_path):
    creds = BrokerCredentials("pi-1", "s3cret")
    creds.save(tmp_path / "c.json")
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o600
    assert BrokerCredentials.load(tmp_path / "c.json") == creds
    assert "s3cret" not in repr(creds)


def test_missing_or_malformed_credentials_are_named(tmp_path):
    with pytest.raises(CredentialsFileError, match="not found"):
        BrokerCredentials.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CredentialsFileError):
        BrokerCredentials.load(tmp_path / "bad.json")


def test_tls_context_pins_the_ca_and_checks_host_names(tmp_path):
    ca = create_ca()
    save_key_and_certificate(ca.key, ca.certificate, tmp_path / "ca.key", tmp_path / "ca.crt")
    endpoint = BrokerEndpoint("mqtts://broker.example", ca_file=tmp_path / "ca.crt")
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("broker.example", 8883, True)
    context = endpoint.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1
    plain = BrokerEndpoint("mqtt://127.0.0.1")
    assert (plain.port, plain.ssl_context()) == (1883, None)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "broker:1883"])
def test_endpoint_refuses_urls_that_are_not_mqtt(url):
    with pytest.raises(SecurityError):
        BrokerEndpoint(url)


def test_endpoint_needs_both_halves_of_a_client_certificate(tmp_path):
    with pytest.raises(SecurityError):
        BrokerEndpoint("mqtts://b", cert_file=tmp_path / "c.crt")
