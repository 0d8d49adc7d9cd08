import base64
import json
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.shared import (
    Command,
    CommandType,
    ExpiredManifestError,
    IntegrityError,
    InvalidFieldError,
    ReplayError,
    SignatureError,
    SignedCommand,
    SignedManifest,
    UnknownKeyError,
    VerifiedManifest,
    WireFormatError,
    WrongDeviceError,
    canonical_json,
    decode,
    encode,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
    sign_command,
    sign_manifest,
    verify_command,
    verify_manifest,
)
from edgefleet.shared.signing import COMMAND_SIGNING_CONTEXT, public_key_of
from support.samples import NOW, make_manifest

KEY = generate_signing_key()
PUB = public_key_of(KEY)
SOON = NOW + timedelta(minutes=1)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_stable_through_a_round_trip(value):
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@given(st.dictionaries(st.text(max_size=6), st.integers(), min_size=2, max_size=6))
def test_canonical_json_ignores_key_order_and_whitespace(mapping):
    reordered = dict(reversed(list(mapping.items())))
    assert canonical_json(mapping) == canonical_json(reordered)
    assert b" " not in canonical_json({k: v for k, v in enumerate(mapping.values())})


def test_canonical_json_is_utf8_and_sorted():
    assert canonical_json({"b": "é", "a": [1, 2.5]}) == '{"a":[1,2.5],"b":"é"}'.encode()
    with pytest.raises(ValueError, match="JSON compliant"):
        canonical_json({"x": float("nan")})


def test_sign_verify_round_trip():
    manifest = make_manifest()
    verified = verify_manifest(sign_manifest(manifest, KEY), PUB, device_id="pi-001", now=SOON)
    assert isinstance(verified, VerifiedManifest)
    assert verified.manifest == manifest
    assert verified.key_id == key_id(PUB)


def test_signed_manifest_survives_the_wire():
    signed = sign_manifest(make_manifest(), KEY)
    received = decode(encode(signed), SignedManifest)
    assert verify_manifest(received, PUB, now=SOON).manifest == make_manifest()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_flipped_byte_in_a_signed_manifest_is_detected(data):
    payload = bytearray(encode(sign_manifest(make_manifest(), KEY)))
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    payload[index] ^= 1 << bit
    with pytest.raises((IntegrityError, WireFormatError)):
        _decode_and_verify(bytes(payload))


def _decode_and_verify(payload: bytes) -> None:
    verify_manifest(decode(payload, SignedManifest), PUB, device_id="pi-001", now=SOON)


@given(st.integers(min_value=1, max_value=10**12), st.text(min_size=1, max_size=20))
@settings(max_examples=25)
def test_sign_verify_round_trips_for_varied_manifests(serial, version):
    version = "".join(c for c in version if c not in "/\\+#\x00") or "v"
    if version in {".", ".."}:
        version = "v"
    manifest = make_manifest(serial=serial).model_copy(update={"version": version[:64]})
    manifest = type(manifest).model_validate(manifest.model_dump())
    assert verify_manifest(sign_manifest(manifest, KEY), PUB, now=SOON).manifest == manifest


def test_signature_from_another_key_is_refused():
    other = generate_signing_key()
    signed = sign_manifest(make_manifest(), other)
    with pytest.raises(UnknownKeyError) as err:
        verify_manifest(signed, PUB, now=SOON)
    assert err.value.key_id == key_id(public_key_of(other))
    forged = signed.model_copy(update={"key_id": key_id(PUB)})
    with pytest.raises(SignatureError):
        verify_manifest(forged, PUB, now=SOON)


def test_tampered_body_is_refused():
    signed = sign_manifest(make_manifest(), KEY)
    body = dict(signed.manifest)
    body["serial"] = 99
    with pytest.raises(SignatureError):
        verify_manifest(signed.model_copy(update={"manifest": body}), PUB, now=SOON)


def test_garbage_signature_is_refused():
    signed = sign_manifest(make_manifest(), KEY)
    bad = signed.model_copy(update={"signature_b64": base64.b64encode(b"x" * 64).decode()})
    with pytest.raises(SignatureError):
        verify_manifest(bad, PUB, now=SOON)
    with pytest.raises(SignatureError):
        verify_manifest(signed.model_copy(update={"signature_b64": "!!"}), PUB, now=SOON)


def test_wrong_device_expired_and_replayed_manifests_are_refused():
    signed = sign_manifest(make_manifest(serial=5), KEY)
    with pytest.raises(WrongDeviceError) as wrong:
        verify_manifest(signed, PUB, device_id="pi-002", now=SOON)
    assert wrong.value.manifest_device == "pi-001"
    with pytest.raises(ExpiredManifestError):
        verify_manifest(signed, PUB, now=NOW + timedelta(days=8))
    with pytest.raises(ReplayError) as replay:
        verify_manifest(signed, PUB, last_serial=5, now=SOON)
    assert (replay.value.serial, replay.value.last_serial) == (5, 5)
    assert verify_manifest(signed, PUB, last_serial=4, now=SOON).manifest.serial == 5


def test_verified_manifest_cannot_be_forged():
    with pytest.raises(TypeError):
        VerifiedManifest(manifest=make_manifest(), key_id="0" * 16, _token=object())


def test_key_files_round_trip_with_private_mode_0600(tmp_path):
    private_path = tmp_path / "keys" / "controller.key"
    public_path = tmp_path / "keys" / "controller.pub"
    save_private_key(KEY, private_path)
    save_public_key(PUB, public_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    loaded = load_private_key(private_path)
    assert key_id(public_key_of(loaded)) == key_id(load_public_key(public_path)) == key_id(PUB)
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert load_public_key(public_path) == PUB


def test_a_public_key_file_written_by_openssl_loads(tmp_path):
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "controller.pub"
    path.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert load_public_key(path) == PUB
    save_public_key(PUB, tmp_path / "again.pub")
    assert (tmp_path / "again.pub").read_bytes() == path.read_bytes()


def test_loading_a_non_ed25519_public_key_names_the_file_and_the_fault(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    path = tmp_path / "x25519.pub"
    path.write_bytes(
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    named = re.escape(f"{path} is not an Ed25519 public key: ")
    with pytest.raises(ValueError, match=named + ".*X25519"):
        load_public_key(path)
    with pytest.raises(FileNotFoundError):
        load_public_key(tmp_path / "missing.pub")


def test_loading_a_non_ed25519_key_is_a_clear_error(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        load_private_key(path)


def test_non_canonical_base64_signature_is_refused():
    signed = sign_manifest(make_manifest(), KEY)
    sig = signed.signature_b64
    assert sig.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(sig[-3])
    twin = sig[:-3] + alphabet[last ^ 1] + "=="  # differs only in unused padding bits
    assert base64.b64decode(twin) == base64.b64decode(sig)
    with pytest.raises(SignatureError):
        verify_manifest(signed.model_copy(update={"signature_b64": twin}), PUB, now=SOON)


# --- signed commands (wire v2) ------------------------------------------------------------


def _command(**changes) -> Command:
    now = datetime.now(UTC)
    fields = {
        "device_id": "pi-001",
        "type": CommandType.ROLLBACK,
        "reason": "operator",
        "issued_at": now,
        "serial": 5,
        "expires_at": now + timedelta(minutes=10),
    }
    return Command(**{**fields, **changes})


def test_a_signed_command_verifies_once_and_survives_the_wire():
    key = generate_signing_key()
    signed = sign_command(_command(), key)
    over_the_wire = decode(encode(signed), SignedCommand)
    verified = verify_command(over_the_wire, public_key_of(key), device_id="pi-001", last_serial=4)
    assert (verified.serial, verified.command.reason) == (5, "operator")
    with pytest.raises(ReplayError, match="command serial 5 is not above last accepted serial 5"):
        verify_command(over_the_wire, public_key_of(key), device_id="pi-001", last_serial=5)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"device_id": "pi-002"}, WrongDeviceError, "command is for device 'pi-002'"),
        ({"expires_at": datetime(2020, 1, 1, tzinfo=UTC)}, ExpiredManifestError, "command expired"),
        ({"serial": 3}, ReplayError, "command serial 3 is not above"),
    ],
)
def test_commands_for_another_device_expired_or_old_are_refused(changes, error, message):
    key = generate_signing_key()
    signed = sign_command(_command(**changes), key)
    with pytest.raises(error, match=message):
        verify_command(signed, public_key_of(key), device_id="pi-001", last_serial=4)


def test_a_command_signed_by_another_key_or_tampered_is_refused():
    key, other = generate_signing_key(), generate_signing_key()
    with pytest.raises(UnknownKeyError, match="command signed by unknown key"):
        verify_command(
            sign_command(_command(), other), public_key_of(key), device_id="pi-001", last_serial=0
        )
    signed = sign_command(_command(), key)
    forged = signed.model_copy(update={"command": {**signed.command, "serial": 10**6}})
    with pytest.raises(SignatureError, match="command signature does not verify"):
        verify_command(forged, public_key_of(key), device_id="pi-001", last_serial=0)


def test_command_and_manifest_signatures_do_not_verify_as_each_other():
    """Commands are signed under their own context: no manifest signature verifies as a
    command (and a command's as a manifest) even over the same canonical JSON."""
    key = generate_signing_key()
    signed = sign_command(_command(), key)
    as_manifest = SignedManifest(
        manifest=signed.command, key_id=signed.key_id, signature_b64=signed.signature_b64
    )
    with pytest.raises(SignatureError):
        verify_manifest(as_manifest, public_key_of(key))
    body = _command().model_dump(mode="json")
    plain = base64.b64encode(key.sign(canonical_json(body))).decode()
    as_command = SignedCommand(command=body, key_id=key_id(public_key_of(key)), signature_b64=plain)
    with pytest.raises(SignatureError):
        verify_command(as_command, public_key_of(key), device_id="pi-001", last_serial=0)


def test_a_signed_command_needs_a_serial_and_an_expiry():
    key = generate_signing_key()
    with pytest.raises(ValueError, match="needs a serial"):
        sign_command(_command(serial=None), key)
    body = _command(expires_at=None).model_dump(mode="json")
    signature = key.sign(COMMAND_SIGNING_CONTEXT + canonical_json(body))
    unsigned_expiry = SignedCommand(
        command=body,
        key_id=key_id(public_key_of(key)),
        signature_b64=base64.b64encode(signature).decode(),
    )
    with pytest.raises(InvalidFieldError, match="expires_at"):
        verify_command(unsigned_expiry, public_key_of(key), device_id="pi-001", last_serial=0)


def test_v1_has_no_signed_commands_and_drops_the_v2_command_fields():
    key = generate_signing_key()
    with pytest.raises(ValueError, match="does not exist in wire v1"):
        encode(sign_command(_command(), key), version=1)
    v1 = json.loads(encode(_command(), version=1))
    assert v1["kind"] == "command"
    assert "serial" not in v1["body"]
    assert "expires_at" not in v1["body"]
    v2_kind_in_v1 = json.dumps({"v": 1, "kind": "signed_command", "body": {}}).encode()
    with pytest.raises(WireFormatError, match="unknown message kind 'signed_command' in wire v1"):
        decode(v2_kind_in_v1, SignedCommand)


def test_a_schema_1_manifest_is_signed_without_the_schema_2_fields():
    """A v1 agent refuses unknown fields, even null ones: schema 1 leaves them out."""
    signed = sign_manifest(make_manifest(), KEY)
    assert not {"golden_ref", "latency"} & set(signed.manifest)
    assert verify_manifest(signed, PUB, now=NOW).manifest.golden_ref is None


def test_a_schema_1_manifest_carries_no_schema_2_health_field():
    manifest = make_manifest()
    assert manifest.schema_version == 1
    signed = sign_manifest(manifest, KEY)
    assert "min_p95_regression_ms" not in signed.manifest["health"]  # a v1 agent refuses it
    assert "max_p95_regression" in signed.manifest["health"]
    schema_2 = manifest.model_copy(update={"schema_version": 2, "golden": None})
    assert sign_manifest(schema_2, KEY).manifest["health"]["min_p95_regression_ms"] == 1.0
