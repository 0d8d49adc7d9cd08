"""A small certificate authority for the broker link: CA, broker server and client certificates.

Keys are ECDSA P-256 (every TLS stack a Pi or a microcontroller ships accepts it, unlike Ed25519
certificates); private keys are written 0600 and never overwritten without ``force``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.controller.security._filewrite import (
    PUBLIC_MODE,
    SECRET_MODE,
    refuse_overwrite,
    write_file,
)
from edgefleet.controller.security.errors import CaNotFoundError, PkiError

CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 825
_BACKDATE = timedelta(minutes=5)  # tolerate devices whose clock is a little behind

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA key and certificate, loaded or freshly made."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


@dataclass(frozen=True, slots=True)
class PkiFiles:
    """The files ``init_pki`` manages, and whether this call created them."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    created_ca: bool
    created_server: bool


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(
    common_name: str = "edgefleet broker CA", valid_days: int = CA_VALID_DAYS
) -> CertificateAuthority:
    """A new self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, cert)


def issue_certificate(
    ca: CertificateAuthority,
    common_name: str,
    *,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[IPAddress, ...] = (),
    server: bool,
    valid_days: int = LEAF_VALID_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a leaf certificate signed by ``ca``: TLS server or TLS client usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ip) for ip in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca.key, hashes.SHA256())


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate.

    Raises:
        PkiError: missing or not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise PkiError(f"cannot load certificate {path}: {e}") from e


def load_ca(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """Load the CA certificate and its private key.

    Raises:
        CaNotFoundError: either file is missing.
        PkiError: the files are not a matching ECDSA CA key and certificate.
    """
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CaNotFoundError(path)
    cert = load_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise PkiError(f"cannot load CA key {key_path}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"CA key {key_path} is a {type(key).__name__}, not an ECDSA key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise PkiError(f"CA key {key_path} does not match certificate {cert_path}")
    return CertificateAuthority(key, cert)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued_by(cert: x509.Certificate, ca: CertificateAuthority) -> bool:
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def certificate_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """The DNS names and IP addresses a certificate's SAN extension lists."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    ips = tuple(
        ip
        for ip in san.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    )
    return tuple(san.get_values_for_type(x509.DNSName)), ips


def save_key_and_certificate(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path
) -> None:
    """Write the key (0600) first, then the certificate (0644)."""
    write_file(key_path, _key_pem(key), SECRET_MODE)
    write_file(cert_path, _cert_pem(cert), PUBLIC_MODE)


def init_pki(
    ca_cert: Path,
    ca_key: Path,
    server_cert: Path,
    server_key: Path,
    *,
    hosts: tuple[str, ...],
    ips: tuple[IPAddress, ...] = (),
    force: bool = False,
) -> PkiFiles:
    """Create the CA (unless it exists) and a broker certificate for ``hosts`` and ``ips``.

    Idempotent: an existing CA is always kept (replacing it would orphan every enrolled device),
    and an existing server certificate with the same names is kept. A server certificate for
    other names is replaced only with ``force``.

    Raises:
        PkiError: no host or IP given, or the existing CA files cannot be used.
        WouldOverwriteError: a server certificate for other names (or from another CA) exists
            and ``force`` is off. Nothing is written then.
    """
    if not hosts and not ips:
        raise PkiError("give at least one --host or --ip for the broker certificate")
    ca_exists = ca_cert.exists() or ca_key.exists()
    ca = load_ca(ca_cert, ca_key) if ca_exists else None
    if ca is not None and server_cert.exists() and server_key.exists():
        existing = load_certificate(server_cert)
        names = certificate_names(existing)
        if _issued_by(existing, ca) and set(names[0]) == set(hosts) and set(names[1]) == set(ips):
            return PkiFiles(ca_cert, ca_key, server_cert, server_key, False, False)
    refuse_overwrite([server_cert, server_key], force=force)
    if ca is None:
        ca = create_ca()
        save_key_and_certificate(ca.key, ca.certificate, ca_key, ca_cert)
    common_name = hosts[0] if hosts else str(ips[0])
    key, cert = issue_certificate(ca, common_name, dns_names=hosts, ip_addresses=ips, server=True)
    save_key_and_certificate(key, cert, server_key, server_cert)
    return PkiFiles(ca_cert, ca_key, server_cert, server_key, not ca_exists, True)


def issue_client_certificate(
    ca: CertificateAuthority,
    common_name: str,
    cert_path: Path,
    key_path: Path,
    *,
    force: bool = False,
) -> None:
    """Issue a TLS client certificate for ``common_name`` (a device id) and save it.

    Raises:
        WouldOverwriteError: the files exist and ``force`` is off.
    """
    refuse_overwrite([cert_path, key_path], force=force)
    key, cert = issue_certificate(ca, common_name, server=False)
    save_key_and_certificate(key, cert, key_path, cert_path)


__all__ = [
    "CertificateAuthority",
    "PkiFiles",
    "certificate_names",
    "create_ca",
    "init_pki",
    "issue_certificate",
    "issue_client_certificate",
    "load_ca",
    "load_certificate",
]
