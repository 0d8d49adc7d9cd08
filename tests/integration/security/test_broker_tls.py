"""The broker's TLS listener: pinned CA, foreign certificates refused, no plain MQTT on 8883,
optional client certificates."""

from __future__ import annotations

import socket
import ssl

import pytest

from edgefleet.controller.security.dynsec import DynsecAdmin
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.identities import BrokerIdentities
from edgefleet.controller.security.pki import (
    create_ca,
    issue_certificate,
    issue_client_certificate,
    load_ca,
    save_key_and_certificate,
)
from edgefleet.shared.topics import Topics
from support.secure_broker import SecureBroker, tls_handshake_error, try_connect

# An MQTT 3.1.1 CONNECT for client id "x", no credentials.
MQTT_CONNECT = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 1]) + b"x"


def refused(endpoint: BrokerEndpoint) -> bool:
    """True if the broker (or the client's verification) ends the attempt without a session."""
    try:
        return not try_connect(endpoint).accepted
    except (ssl.SSLError, ConnectionError):
        return True


def test_device_connects_over_tls_with_the_pinned_ca(fleet, device_ids):
    a = fleet.identities.add_device(device_ids[0])
    endpoint = fleet.broker.tls_endpoint(a.credentials)
    assert try_connect(endpoint).accepted
    context = endpoint.ssl_context()
    assert context is not None
    with (
        socket.create_connection((endpoint.host, endpoint.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=endpoint.host) as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert tls.getpeercert()["subject"][-1] == (("commonName", "localhost"),)


def test_client_refuses_a_broker_certificate_from_another_ca(fleet, device_ids, tmp_path):
    a = fleet.identities.add_device(device_ids[0])
    # Pinned to a CA that did not sign this broker's certificate.
    other = create_ca("someone else's CA")
    other_ca = tmp_path / "other-ca.crt"
    save_key_and_certificate(other.key, other.certificate, tmp_path / "other-ca.key", other_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        try_connect(fleet.broker.tls_endpoint(a.credentials, ca_file=other_ca))
    # An impostor broker with a valid-looking certificate (right names) from its own CA.
    impostor = SecureBroker(tmp_path / "impostor")
    impostor.start()
    try:
        pinned_to_ours = BrokerEndpoint(
            impostor.tls_url, credentials=a.credentials, ca_file=fleet.broker.pki.ca_cert
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            try_connect(pinned_to_ours)
    finally:
        impostor.kill()


def test_client_checks_the_broker_certificate_host_name(fleet):
    # The broker certificate names localhost and 127.0.0.1, not "broker.example".
    context = fleet.broker.tls_endpoint(None).ssl_context()
    assert context is not None
    error = tls_handshake_error(fleet.broker.host, fleet.broker.tls_port, context, "broker.example")
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert "mismatch" in str(error) or "match" in str(error)
    assert (
        tls_handshake_error(fleet.broker.host, fleet.broker.tls_port, context, "localhost") is None
    )


def test_plain_mqtt_is_not_offered_on_the_tls_listener(fleet):
    with socket.create_connection((fleet.broker.host, fleet.broker.tls_port), timeout=5) as raw:
        raw.sendall(MQTT_CONNECT)
        reply = b""
        try:
            while chunk := raw.recv(64):
                reply += chunk
        except ConnectionResetError:
            pass
    assert not reply.startswith(b"\x20"), "the TLS port answered a plain CONNECT with a CONNACK"
    # The same CONNECT on the loopback plain listener does get a CONNACK (refusing anonymous).
    with socket.create_connection((fleet.broker.host, fleet.broker.plain_port), timeout=5) as raw:
        raw.sendall(MQTT_CONNECT)
        connack = raw.recv(4)
    assert connack[0] == 0x20
    assert connack[3] == 5  # "not authorized": anonymous access is off


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory):
    broker = SecureBroker(tmp_path_factory.mktemp("mtls-broker"), require_certificate=True)
    broker.start()
    yield broker
    broker.kill()


def test_required_client_certificate_is_checked_together_with_the_password(mtls_broker, tmp_path):
    with DynsecAdmin(mtls_broker.admin_endpoint()) as admin:
        device = BrokerIdentities(admin, Topics("mtls-test/v1")).add_device("pi-mtls")
    ca = load_ca(mtls_broker.pki.ca_cert, mtls_broker.pki.ca_key)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    issue_client_certificate(ca, "pi-mtls", cert, key)
    assert (key.stat().st_mode & 0o777) == 0o600

    with_cert = mtls_broker.tls_endpoint(device.credentials, cert_file=cert, key_file=key)
    assert try_connect(with_cert).accepted
    assert refused(mtls_broker.tls_endpoint(device.credentials))  # no certificate
    wrong_password = BrokerCredentials("pi-mtls", "not-the-password")
    assert refused(mtls_broker.tls_endpoint(wrong_password, cert_file=cert, key_file=key))
    # A client certificate from another CA.
    rogue_ca = create_ca("rogue")
    rogue_key, rogue_cert = issue_certificate(rogue_ca, "pi-mtls", server=False)
    save_key_and_certificate(rogue_key, rogue_cert, tmp_path / "r.key", tmp_path / "r.crt")
    rogue = mtls_broker.tls_endpoint(
        device.credentials, cert_file=tmp_path / "r.crt", key_file=tmp_path / "r.key"
    )
    assert refused(rogue)
