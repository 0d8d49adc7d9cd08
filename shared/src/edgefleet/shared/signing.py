"""Ed25519 manifest signing and verification, canonical JSON, and key files.

``verify_manifest`` is the only way to obtain a :class:`VerifiedManifest`; code that installs a
model accepts nothing else, so skipping verification is a type error rather than a bug.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgefleet.shared.errors import (
    ExpiredManifestError,
    ReplayError,
    SignatureError,
    UnknownKeyError,
    WrongDeviceError,
    field_error,
)
from edgefleet.shared.manifest import Manifest, SignedManifest


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no insignificant whitespace, UTF-8, no NaN.

    Raises:
        ValueError: ``value`` holds NaN or infinity, which JSON cannot carry.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of sha256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename) with ``mode`` set first.

    Used for keys, tokens and bundles: the file never exists with looser permissions or half
    written. A directory created for a private (0600) file is private too (0700).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode & 0o077 == 0 else 0o777)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Save ``key`` as unencrypted PKCS#8 PEM with file mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomic(path, pem, 0o600)


def save_public_key(key: Ed25519PublicKey, path: Path) -> None:
    """Save ``key`` as SubjectPublicKeyInfo PEM (mode 0644)."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_file_atomic(path, pem, 0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from PEM.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an Ed25519 private key.
    """
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an Ed25519 public key.
    """
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """Sign the canonical JSON of ``manifest``."""
    body = manifest.model_dump(mode="json")
    signature = private_key.sign(canonical_json(body))
    return SignedManifest(
        manifest=body,
        key_id=key_id(private_key.public_key()),
        signature_b64=base64.b64encode(signature).decode("ascii"),
    )


@dataclass(frozen=True, slots=True)
class VerifiedManifest:
    """A manifest whose signature, target, expiry and serial were all checked.

    Built only by :func:`verify_manifest` (the constructor demands a private token).
    """

    manifest: Manifest
    key_id: str
    _token: object

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedManifest is only created by verify_manifest()")


_VERIFIED = object()


def verify_manifest(
    signed: SignedManifest,
    trusted_keys: Mapping[str, Ed25519PublicKey] | Ed25519PublicKey,
    *,
    device_id: str | None = None,
    last_serial: int | None = None,
    now: datetime | None = None,
) -> VerifiedManifest:
    """Check a signed manifest in the order of trust and return it verified.

    Order: known key -> signature over the canonical JSON -> schema -> target device ->
    expiry -> serial above the last accepted one. Nothing is parsed before it is verified.

    Raises:
        UnknownKeyError: ``signed.key_id`` is not among ``trusted_keys``.
        SignatureError: the signature does not verify.
        InvalidFieldError: the signed body is not a valid manifest (a ``FieldBoundError``
            when a field is out of its bound); both are ``WireFormatError``.
        WrongDeviceError: the manifest is for another device.
        ExpiredManifestError: ``expires_at`` is not after ``now``.
        ReplayError: ``serial`` is not above ``last_serial``.
    """
    if isinstance(trusted_keys, Ed25519PublicKey):
        trusted_keys = {key_id(trusted_keys): trusted_keys}
    public_key = trusted_keys.get(signed.key_id)
    if public_key is None:
        raise UnknownKeyError(signed.key_id)
    try:
        signature = base64.b64decode(signed.signature_b64, validate=True)
        if base64.b64encode(signature).decode("ascii") != signed.signature_b64:
            # Unused low bits in the last base64 digit would let two strings carry one signature.
            raise ValueError("signature is not canonical base64")
        public_key.verify(signature, canonical_json(signed.manifest))
    except (InvalidSignature, binascii.Error, ValueError) as e:
        raise SignatureError(f"manifest signature does not verify with key {signed.key_id}") from e
    try:
        manifest = Manifest.model_validate(signed.manifest)
    except ValidationError as e:
        raise field_error(e, kind="manifest", data=signed.manifest) from e
    if device_id is not None and manifest.device_id != device_id:
        raise WrongDeviceError(manifest.device_id, device_id)
    now = now or datetime.now(UTC)
    if manifest.expires_at <= now:
        raise ExpiredManifestError(manifest.expires_at.isoformat(), now.isoformat())
    if last_serial is not None and manifest.serial <= last_serial:
        raise ReplayError(manifest.serial, last_serial)
    return VerifiedManifest(manifest=manifest, key_id=signed.key_id, _token=_VERIFIED)
