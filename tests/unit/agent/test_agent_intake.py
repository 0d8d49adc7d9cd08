"""edgefleet.agent.intake: what a desired-state payload is, and which refusals are final."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from edgefleet.agent.intake import (
    Accepted,
    Dropped,
    Ignored,
    Refused,
    manifest_digest,
    read_desired,
)
from edgefleet.shared import DEFAULT_LIMITS, encode, generate_signing_key, sign_manifest
from edgefleet.shared.signing import public_key_of
from support.samples import NOW, make_manifest

KEY = generate_signing_key()
PUB = public_key_of(KEY)


def read(signed, *, last_serial=5, last_digest=None, now=NOW + timedelta(hours=1), key=KEY):
    return read_desired(
        encode(signed),
        public_key_of(key),
        device_id="pi-001",
        last_serial=last_serial,
        last_digest=last_digest,
        now=now,
    )


def test_a_newer_verified_manifest_is_accepted():
    signed = sign_manifest(make_manifest(serial=6), KEY)
    intake = read(signed)
    assert isinstance(intake, Accepted)
    assert intake.verified.manifest.serial == 6
    assert intake.digest == manifest_digest(signed)


def test_a_cleared_payload_is_ignored_and_malformed_ones_dropped_by_digest():
    cleared = read_desired(b"", PUB, device_id="pi-001", last_serial=0, last_digest=None)
    assert isinstance(cleared, Ignored)
    oversize = b" " * (DEFAULT_LIMITS.max_message_bytes + 1)
    for payload, error in (
        (b"{", "MalformedPayloadError"),
        (b'{"v": 2, "kind": "manifest", "body": {}}', "InvalidFieldError"),
        (oversize, "PayloadTooLargeError"),
    ):
        intake = read_desired(payload, PUB, device_id="pi-001", last_serial=0, last_digest=None)
        assert isinstance(intake, Dropped)
        assert error in intake.reason
        assert intake.payload_sha256 == hashlib.sha256(payload).hexdigest()
        assert intake.size == len(payload)


def test_a_replay_is_refused_with_figures_and_a_redelivery_ignored():
    signed = sign_manifest(make_manifest(serial=4), KEY)
    intake = read(signed)
    assert isinstance(intake, Refused)
    assert intake.final is None
    assert intake.figures == {"serial": 4.0, "last_serial": 5.0}
    assert isinstance(read(signed, last_digest=manifest_digest(signed)), Ignored)


def test_an_expired_new_serial_is_a_final_refusal_an_old_one_is_not():
    signed = sign_manifest(make_manifest(serial=6), KEY)
    late = NOW + timedelta(days=30)
    intake = read(signed, now=late)
    assert isinstance(intake, Refused)
    assert intake.final is not None
    assert intake.final.serial == 6
    assert intake.reason.startswith("ExpiredManifestError: manifest expired at")
    old = read(sign_manifest(make_manifest(serial=5), KEY), now=late)
    assert isinstance(old, Refused)
    assert old.final is None
    assert isinstance(read(signed, now=late, last_digest=manifest_digest(signed)), Ignored)


def test_unverified_payloads_are_never_final():
    signed = sign_manifest(make_manifest(serial=6), generate_signing_key())
    intake = read(signed)
    assert isinstance(intake, Refused)
    assert intake.final is None
    assert "unknown key" in intake.reason
    other = read(sign_manifest(make_manifest(serial=6, device_id="pi-002"), KEY))
    assert isinstance(other, Refused)
    assert other.final is None
