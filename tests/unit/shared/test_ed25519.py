"""edgefleet.shared.ed25519: PEM public keys as OpenSSL writes them, parsed strictly, and
signatures made by ``cryptography`` (as the controller makes them) verified with libsodium."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.shared import SignatureError, generate_signing_key
from edgefleet.shared.ed25519 import SPKI_PREFIX, InvalidSignatureError, PublicKey
from edgefleet.shared.signing import public_key_of

KEY = ed25519.Ed25519PrivateKey.generate()
PUB = public_key_of(KEY)


def spki_pem(public_key: PublicKeyTypes) -> bytes:
    """What ``openssl pkey -pubout`` writes, through cryptography (OpenSSL)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_of(der: bytes, label: str = "PUBLIC KEY") -> bytes:
    body = base64.b64encode(der).decode()
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def flip_bit(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return bytes(changed)


# --- PEM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("_", range(5))
def test_openssl_pem_loads_and_is_written_back_byte_for_byte(_):
    private = generate_signing_key()
    pem = spki_pem(private.public_key())
    key = PublicKey.from_pem(pem)
    assert key.raw == private.public_key().public_bytes_raw()
    assert key == public_key_of(private) == PublicKey.from_raw(key.raw)
    assert key.to_pem() == pem
    assert PublicKey.from_pem(key.to_pem()) == key


def test_cryptography_loads_the_pem_this_module_writes():
    loaded = serialization.load_pem_public_key(PUB.to_pem())
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
    assert loaded.public_bytes_raw() == PUB.raw


def test_crlf_line_ends_surrounding_whitespace_and_rewrapped_bodies_load():
    pem = spki_pem(KEY.public_key()).decode()
    begin, body, end = pem.splitlines()
    for variant in (
        pem.replace("\n", "\r\n"),
        f"\n\n  {pem}  \n\n",
        "\n".join([begin, body[:20], body[20:40], body[40:], end]),
    ):
        assert PublicKey.from_pem(variant.encode()) == PUB


OTHER_ALGORITHMS = {
    "X25519": lambda: x25519.X25519PrivateKey.generate().public_key(),
    "RSA": lambda: rsa.generate_private_key(65537, 2048).public_key(),
    "EC": lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
}


@pytest.mark.parametrize("algorithm", OTHER_ALGORITHMS)
def test_a_public_key_of_another_algorithm_is_refused_by_name(algorithm):
    pem = spki_pem(OTHER_ALGORITHMS[algorithm]())
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")  # same label: only the DER tells
    with pytest.raises(ValueError, match=f"not an Ed25519 SubjectPublicKeyInfo.*a {algorithm} key"):
        PublicKey.from_pem(pem)


DER = SPKI_PREFIX + PUB.raw
GOOD = pem_of(DER).decode()


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (pem_of(b"\x30\x2b" + DER[2:]), "DER starts 302b3005.*, expected 302a3005"),  # one byte off
        (pem_of(DER[:-1]), "DER is 44 bytes, not 43"),  # a truncated key
        (pem_of(DER + b"\x00"), "DER is 44 bytes, not 45"),  # a trailing byte
        (pem_of(DER[:8]), "DER is 44 bytes, not 8"),
        (GOOD[: len(GOOD) // 2], r"no -----END PUBLIC KEY----- line \(truncated\?\)"),
        (GOOD + GOOD, "expected exactly one PEM block, found 2"),
        (GOOD + pem_of(b"x", "CERTIFICATE").decode(), "expected exactly one PEM block, found 2"),
        ("", "expected exactly one PEM block, found 0"),
        (base64.b64encode(DER).decode(), "expected exactly one PEM block, found 0"),
        (GOOD.replace("MCow", "MC!w"), "not valid base64"),
        (GOOD.replace("MCow", "MCo"), "not valid base64"),  # padding no longer fits
        (GOOD.replace("=\n", "\n"), "not valid base64"),  # padding missing
        ("subject: me\n" + GOOD, "text before the PEM block's BEGIN line"),
        (GOOD + "trailer\n", "text after the PEM block's END line"),
        (pem_of(DER, "RSA PUBLIC KEY").decode(), "labelled 'RSA PUBLIC KEY', not 'PUBLIC KEY'"),
        (GOOD.replace("END PUBLIC", "END PRIVATE"), "no -----END PUBLIC KEY----- line"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else None,
)
def test_malformed_pem_is_refused_saying_what_is_wrong(pem, message):
    with pytest.raises(ValueError, match=message):
        PublicKey.from_pem(pem.encode() if isinstance(pem, str) else pem)


def test_a_private_key_pem_is_not_a_public_key():
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="labelled 'PRIVATE KEY', not 'PUBLIC KEY'"):
        PublicKey.from_pem(pem)


def test_non_canonical_base64_and_non_ascii_are_refused():
    body = base64.b64encode(DER).decode()
    assert body.endswith("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = body[:-2] + alphabet[alphabet.index(body[-2]) ^ 1] + "="  # unused low bits set
    assert base64.b64decode(twin) == DER
    with pytest.raises(ValueError, match="not canonical base64"):
        PublicKey.from_pem(GOOD.replace(body, twin).encode())
    with pytest.raises(ValueError, match="not ASCII"):
        PublicKey.from_pem(GOOD.replace("PUBLIC", "PÜBLIC").encode())


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_raw_key_must_be_32_bytes(length):
    with pytest.raises(ValueError, match=f"32 bytes, not {length}"):
        PublicKey.from_raw(b"\x01" * length)


def test_keys_compare_and_hash_by_their_raw_bytes():
    again = PublicKey.from_raw(bytearray(PUB.raw))
    assert again == PUB
    assert {PUB: "controller"}[again] == "controller"
    assert PublicKey.from_raw(flip_bit(PUB.raw, 0)) != PUB
    assert "_verify_key" not in repr(PUB)
    with pytest.raises(TypeError, match="bytes, not str"):
        PublicKey("x" * 32)  # type: ignore[arg-type]


# --- signatures ---------------------------------------------------------------------------


def test_a_signature_made_by_cryptography_verifies():
    PUB.verify(KEY.sign(b"manifest"), b"manifest")
    PUB.verify(KEY.sign(b""), b"")


@pytest.mark.parametrize("bit", [0, 7, 100, 255, 511])
def test_one_flipped_bit_in_the_signature_or_message_is_refused(bit):
    message = b"the canonical JSON of a manifest, long enough for every bit index here" * 2
    signature = KEY.sign(message)
    with pytest.raises(InvalidSignatureError, match="does not verify"):
        PUB.verify(flip_bit(signature, bit), message)
    with pytest.raises(InvalidSignatureError, match="does not verify"):
        PUB.verify(signature, flip_bit(message, bit))


def test_a_bad_signature_is_a_value_error_and_an_integrity_error():
    with pytest.raises(InvalidSignatureError) as err:
        PUB.verify(generate_signing_key().sign(b"m"), b"m")
    assert isinstance(err.value, ValueError)
    assert isinstance(err.value, SignatureError)


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_a_signature_of_the_wrong_length_is_refused_with_its_length(length):
    with pytest.raises(InvalidSignatureError, match=f"64 bytes, not {length}"):
        PUB.verify(b"\x00" * length, b"m")


@settings(max_examples=150, deadline=None)
@given(
    message=st.binary(max_size=2048),
    where=st.integers(min_value=0),
    delta=st.integers(min_value=1, max_value=255),
    in_signature=st.booleans(),
)
def test_a_signed_message_verifies_and_no_single_byte_change_does(
    message, where, delta, in_signature
):
    signature = KEY.sign(message)
    PUB.verify(signature, message)
    if not message:
        in_signature = True
    changed = bytearray(signature if in_signature else message)
    changed[where % len(changed)] ^= delta
    forged = (bytes(changed), message) if in_signature else (signature, bytes(changed))
    with pytest.raises(InvalidSignatureError):
        PUB.verify(*forged)
