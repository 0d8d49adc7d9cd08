"""Ed25519 manifest and command signing and verification, canonical JSON, and key files.

``verify_manifest`` is the only way to obtain a :class:`VerifiedManifest` (and
``verify_command`` a :class:`VerifiedCommand`); code that installs a model or obeys a command
accepts nothing else, so skipping verification is a type error rather than a bug.

Verification runs on :class:`~edgefleet.shared.ed25519.PublicKey` (libsodium). Only the
functions that touch a private key import ``cryptography``, inside the function, so a device
that merely verifies never loads it.
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
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgefleet.shared.ed25519 import PublicKey
from edgefleet.shared.errors import (
    ExpiredManifestError,
    InvalidFieldError,
    ReplayError,
    SignatureError,
    UnknownKeyError,
    WrongDeviceError,
    field_error,
)
from edgefleet.shared.manifest import (
    SCHEMA_2_FIELDS,
    SCHEMA_2_HEALTH_FIELDS,
    Manifest,
    SignedManifest,
)
from edgefleet.shared.messages import Command, SignedCommand

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no insignificant whitespace, UTF-8, no NaN.

    Raises:
        ValueError: ``value`` holds NaN or infinity, which JSON cannot carry.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_id(public_key: PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of sha256(raw key)."""
    return hashlib.sha256(public_key.raw).hexdigest()[:16]


def public_key_of(private_key: Ed25519PrivateKey) -> PublicKey:
    """The verification half of a (``cryptography``) private key."""
    return PublicKey.from_raw(private_key.public_key().public_bytes_raw())


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key (``cryptography``; the controller's side only)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename) with ``mode`` set first.

    Used for keys, tokens and bundles: the file never exists with looser permissions or half
    written. A directory created for a private (0600) file is private too (0700).
    """
    # Never group- or world-writable, whatever the umask (a 000 umask would leave 0777).
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode & 0o077 == 0 else 0o755)
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
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomic(path, pem, 0o600)


def save_public_key(key: PublicKey, path: Path) -> None:
    """Save ``key`` as SubjectPublicKeyInfo PEM (mode 0644)."""
    write_file_atomic(path, key.to_pem(), 0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from PEM.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> PublicKey:
    """Load an Ed25519 public key from SubjectPublicKeyInfo PEM (one block, nothing else).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an Ed25519 public key (the message says what is wrong).
    """
    data = path.read_bytes()
    try:
        return PublicKey.from_pem(data)
    except ValueError as e:
        raise ValueError(f"{path} is not an Ed25519 public key: {e}") from e


TrustedKeys = Mapping[str, PublicKey] | PublicKey

# Commands are signed over this prefix and their canonical JSON, so no signature made for one
# kind of message verifies as another (manifests keep their v1 form: canonical JSON alone).
COMMAND_SIGNING_CONTEXT = b"edgefleet-command-v2\n"


def _check_signature(
    message: bytes, signer: str, signature_b64: str, trusted_keys: TrustedKeys, what: str
) -> None:
    """Raises: UnknownKeyError, SignatureError."""
    if isinstance(trusted_keys, PublicKey):
        trusted_keys = {key_id(trusted_keys): trusted_keys}
    public_key = trusted_keys.get(signer)
    if public_key is None:
        raise UnknownKeyError(signer, what=what)
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        if base64.b64encode(signature).decode("ascii") != signature_b64:
            # Unused low bits in the last base64 digit would let two strings carry one signature.
            raise ValueError("signature is not canonical base64")
        public_key.verify(signature, message)
    except (binascii.Error, ValueError) as e:  # InvalidSignatureError is a ValueError
        raise SignatureError(f"{what} signature does not verify with key {signer}") from e


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """Sign the canonical JSON of ``manifest``; a schema-1 manifest without the schema-2 fields
    (a v1 agent refuses any field it does not know)."""
    exclude: dict[str, Any] | None = None
    if manifest.schema_version == 1:
        exclude = dict.fromkeys(SCHEMA_2_FIELDS, True)
        exclude["health"] = dict.fromkeys(SCHEMA_2_HEALTH_FIELDS, True)
    body = manifest.model_dump(mode="json", exclude=exclude)
    signature = private_key.sign(canonical_json(body))
    return SignedManifest(
        manifest=body,
        key_id=key_id(public_key_of(private_key)),
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
    trusted_keys: TrustedKeys,
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
    _check_signature(
        canonical_json(signed.manifest),
        signed.key_id,
        signed.signature_b64,
        trusted_keys,
        "manifest",
    )
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


def sign_command(command: Command, private_key: Ed25519PrivateKey) -> SignedCommand:
    """Sign a wire-v2 command (it must carry a ``serial`` and an ``expires_at``).

    Raises:
        ValueError: the command has no serial or no expiry.
    """
    if command.serial is None or command.expires_at is None:
        raise ValueError("a signed command needs a serial and an expires_at")
    body = command.model_dump(mode="json")
    signature = private_key.sign(COMMAND_SIGNING_CONTEXT + canonical_json(body))
    return SignedCommand(
        command=body,
        key_id=key_id(public_key_of(private_key)),
        signature_b64=base64.b64encode(signature).decode("ascii"),
    )


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    """A command whose signature, target, expiry and serial were all checked.

    Built only by :func:`verify_command`; ``serial`` is the checked one (never None).
    """

    command: Command
    serial: int
    key_id: str
    _token: object

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedCommand is only created by verify_command()")


def verify_command(
    signed: SignedCommand,
    trusted_keys: TrustedKeys,
    *,
    device_id: str,
    last_serial: int,
    now: datetime | None = None,
) -> VerifiedCommand:
    """Check a signed command in the order of trust, as :func:`verify_manifest` does.

    Order: known key -> signature over the context and the canonical JSON -> schema (a serial
    and an expiry are required) -> target device -> expiry -> serial above ``last_serial``.

    Raises:
        UnknownKeyError, SignatureError: not signed by a trusted key.
        InvalidFieldError: the signed body is not a valid v2 command (``WireFormatError``).
        WrongDeviceError: the command is for another device.
        ExpiredManifestError: ``expires_at`` is not after ``now``.
        ReplayError: ``serial`` is not above ``last_serial``.
    """
    message = COMMAND_SIGNING_CONTEXT + canonical_json(signed.command)
    _check_signature(message, signed.key_id, signed.signature_b64, trusted_keys, "command")
    try:
        command = Command.model_validate(signed.command)
    except ValidationError as e:
        raise field_error(e, kind="command", data=signed.command) from e
    if command.serial is None or command.expires_at is None:
        raise InvalidFieldError(
            kind="command",
            field="serial" if command.serial is None else "expires_at",
            reason="a signed command needs a serial and an expires_at",
            code="missing",
        )
    if command.device_id != device_id:
        raise WrongDeviceError(command.device_id, device_id, what="command")
    now = now or datetime.now(UTC)
    if command.expires_at <= now:
        raise ExpiredManifestError(command.expires_at.isoformat(), now.isoformat(), what="command")
    if command.serial <= last_serial:
        raise ReplayError(command.serial, last_serial, what="command")
    return VerifiedCommand(
        command=command, serial=command.serial, key_id=signed.key_id, _token=_VERIFIED
    )
