"""Ed25519 public keys and signature verification on libsodium (PyNaCl), with no OpenSSL.

The agent only verifies, so it never imports ``cryptography``; the controller signs with it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from edgefleet.shared.errors import SignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# An Ed25519 SubjectPublicKeyInfo (RFC 8410) is this fixed DER prefix and the raw key:
# SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (0 unused bits) }.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_SPKI_BYTES = len(SPKI_PREFIX) + PUBLIC_KEY_BYTES
_LABEL = "PUBLIC KEY"
_BEGIN_LINE = re.compile(r"-----BEGIN (?P<label>[^-]*)-----")
_END_LINE = f"-----END {_LABEL}-----"
# Algorithm OIDs (DER tag, length, value) of keys that are easily mistaken for this one.
_OTHER_ALGORITHMS = {
    bytes.fromhex("06032b656e"): "X25519",
    bytes.fromhex("06032b656f"): "X448",
    bytes.fromhex("06032b6571"): "Ed448",
    bytes.fromhex("06092a864886f70d010101"): "RSA",
    bytes.fromhex("06072a8648ce3d0201"): "EC",
}


class InvalidSignatureError(SignatureError, ValueError):
    """A signature that does not verify with this key (or is not 64 bytes at all)."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key: its raw 32 bytes (compared and hashed by them).

    Raises:
        TypeError: ``raw`` is not bytes.
        ValueError: ``raw`` is not 32 bytes long.
    """

    raw: bytes
    _verify_key: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes):
            raise TypeError(f"an Ed25519 public key is bytes, not {type(self.raw).__name__}")
        if len(self.raw) != PUBLIC_KEY_BYTES:
            raise ValueError(
                f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(self.raw)}"
            )
        object.__setattr__(self, "_verify_key", nacl.signing.VerifyKey(self.raw))

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        """The key whose raw encoding is ``raw``.

        Raises:
            ValueError: ``raw`` is not 32 bytes long.
        """
        return cls(bytes(raw))

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Parse one SubjectPublicKeyInfo PEM block (``openssl pkey -pubout``) strictly.

        Only whitespace may surround the block; its body must be canonical base64 of the
        44-byte Ed25519 DER, nothing else.

        Raises:
            ValueError: not exactly one ``PUBLIC KEY`` block, bad base64, or the DER is not
                an Ed25519 SubjectPublicKeyInfo (another algorithm, truncated, trailing bytes).
        """
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as e:
            raise ValueError(f"PEM is not ASCII text (byte {e.start})") from e
        blocks = text.count("-----BEGIN ")
        if blocks != 1:
            raise ValueError(f"expected exactly one PEM block, found {blocks}")
        lines = text.strip().splitlines()
        begin = _BEGIN_LINE.fullmatch(lines[0].strip())
        if begin is None:
            raise ValueError("text before the PEM block's BEGIN line")
        if begin["label"] != _LABEL:
            raise ValueError(f"PEM block is labelled {begin['label']!r}, not {_LABEL!r}")
        if len(lines) < 2 or lines[-1].strip() != _END_LINE:
            if _END_LINE in text:
                raise ValueError("text after the PEM block's END line")
            raise ValueError(f"PEM block has no {_END_LINE} line (truncated?)")
        body = "".join("".join(lines[1:-1]).split())
        try:
            der = base64.b64decode(body, validate=True)
        except binascii.Error as e:
            raise ValueError(f"PEM body is not valid base64: {e}") from e
        if base64.b64encode(der).decode("ascii") != body:
            raise ValueError("PEM body is not canonical base64")
        if der[: len(SPKI_PREFIX)] != SPKI_PREFIX[: len(der)]:
            found = [name for oid, name in _OTHER_ALGORITHMS.items() if oid in der[:32]]
            raise ValueError(
                f"not an Ed25519 SubjectPublicKeyInfo: DER starts {der[: len(SPKI_PREFIX)].hex()},"
                f" expected {SPKI_PREFIX.hex()}" + (f" (a {found[0]} key)" if found else "")
            )
        if len(der) != _SPKI_BYTES:
            raise ValueError(
                f"Ed25519 SubjectPublicKeyInfo DER is {_SPKI_BYTES} bytes, not {len(der)}"
            )
        return cls(der[len(SPKI_PREFIX) :])

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, byte for byte what OpenSSL writes for this key."""
        body = base64.b64encode(SPKI_PREFIX + self.raw).decode("ascii")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "\n".join([f"-----BEGIN {_LABEL}-----", *lines, _END_LINE, ""]).encode("ascii")

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check that ``signature`` is this key's Ed25519 signature over ``message``.

        Raises:
            InvalidSignatureError: it is not (a ``SignatureError`` and a ``ValueError``).
        """
        if len(signature) != SIGNATURE_BYTES:
            raise InvalidSignatureError(
                f"an Ed25519 signature is {SIGNATURE_BYTES} bytes, not {len(signature)}"
            )
        try:
            self._verify_key.verify(bytes(message), bytes(signature))
        except nacl.exceptions.CryptoError as e:
            raise InvalidSignatureError("the Ed25519 signature does not verify") from e
