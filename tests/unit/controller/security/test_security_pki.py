"""The CA, server and client certificates: usages, names, chain, file modes, idempotence."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from edgefleet.controller.security.errors import CaNotFoundError, PkiError, WouldOverwriteError
from edgefleet.controller.security.pki import (
    certificate_names,
    create_ca,
    init_pki,
    issue_client_certificate,
    load_ca,
    load_certificate,
)

LOCALHOST = ipaddress.ip_address("127.0.0.1")


def _init(d, hosts=("broker.example", "localhost"), ips=(LOCALHOST,), force=False):
    return init_pki(
        d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key",
        hosts=hosts, ips=ips, force=force,
    )  # fmt: skip


def test_init_creates_a_ca_and_a_server_certificate_a_tls_client_accepts(tmp_path):
    files = _init(tmp_path)
    assert files.created_ca
    assert files.created_server
    ca = load_certificate(files.ca_cert)
    server = load_certificate(files.server_cert)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate_names(server) == (("broker.example", "localhost"), (LOCALHOST,))
    # The same path validation a TLS client does, for each name it may connect by.
    builder = PolicyBuilder().store(Store([ca])).time(datetime.now(UTC))
    for name in (x509.DNSName("broker.example"), x509.IPAddress(LOCALHOST)):
        chain = builder.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(x509.verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("other.example")).verify(server, [])


def test_private_keys_are_0600_and_certificates_0644(tmp_path):
    files = _init(tmp_path)
    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    assert files.ca_cert.stat().st_mode & 0o777 == 0o644
    assert files.server_cert.stat().st_mode & 0o777 == 0o644


def test_init_is_idempotent_and_never_replaces_the_ca(tmp_path):
    _init(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = _init(tmp_path)
    assert not again.created_ca
    assert not again.created_server
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    with pytest.raises(WouldOverwriteError):
        _init(tmp_path, hosts=("new-name.example",))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    forced = _init(tmp_path, hosts=("new-name.example",), force=True)
    assert forced.created_server
    assert not forced.created_ca
    assert (tmp_path / "ca.key").read_bytes() == before["ca.key"]
    assert certificate_names(load_certificate(tmp_path / "server.crt"))[0] == ("new-name.example",)
    load_certificate(tmp_path / "server.crt").verify_directly_issued_by(
        load_certificate(tmp_path / "ca.crt")
    )


def test_a_server_certificate_from_another_ca_is_not_kept(tmp_path):
    _init(tmp_path)
    other = tmp_path / "other"
    _init(other)
    (tmp_path / "server.crt").write_bytes((other / "server.crt").read_bytes())
    with pytest.raises(WouldOverwriteError):
        _init(tmp_path)


def test_init_needs_a_name_and_a_usable_ca(tmp_path):
    with pytest.raises(PkiError, match="--host"):
        _init(tmp_path, hosts=(), ips=())
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(CaNotFoundError):
        _init(tmp_path)  # the key is missing
    (tmp_path / "ca.key").write_text("not a key")
    with pytest.raises(PkiError):
        _init(tmp_path)


def test_load_ca_refuses_a_key_of_another_ca(tmp_path):
    _init(tmp_path)
    other = tmp_path / "other"
    _init(other)
    with pytest.raises(PkiError, match="does not match"):
        load_ca(tmp_path / "ca.crt", other / "ca.key")


def test_client_certificate_is_for_client_auth_under_the_ca(tmp_path):
    ca = create_ca()
    cert_path, key_path = tmp_path / "pi-1.crt", tmp_path / "pi-1.key"
    issue_client_certificate(ca, "pi-1", cert_path, key_path)
    cert = load_certificate(cert_path)
    cert.verify_directly_issued_by(ca.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "pi-1"
    assert key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(WouldOverwriteError):
        issue_client_certificate(ca, "pi-1", cert_path, key_path)
