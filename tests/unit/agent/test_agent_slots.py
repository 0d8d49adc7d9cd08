"""edgefleet.agent.slots: active/previous rotation, atomic state, corruption detection."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.agent.slots import SlotStore
from edgefleet.shared import (
    HashMismatchError,
    LengthMismatchError,
    generate_signing_key,
    sign_manifest,
    verify_manifest,
)
from support.samples import make_manifest

KEY = generate_signing_key()


def install(store: SlotStore, tmp_path, serial: int, data: bytes):
    manifest = make_manifest(
        serial=serial, data=data, created_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    signed = sign_manifest(manifest, KEY)
    verified = verify_manifest(signed, KEY.public_key(), device_id="pi-001")
    download = store.downloads_dir / manifest.artifact.sha256
    download.write_bytes(data)
    return store.install(verified, signed, download)


def test_install_rotates_and_collects_garbage(tmp_path):
    store = SlotStore(tmp_path)
    one = install(store, tmp_path, 1, b"one" * 100)
    two = install(store, tmp_path, 2, b"two" * 100)
    assert store.active == two
    assert store.previous == one
    three = install(store, tmp_path, 3, b"three" * 100)
    assert store.previous == two
    assert sorted(p.name for p in store.artifacts_dir.iterdir()) == sorted(
        [two.manifest.artifact.sha256, three.manifest.artifact.sha256]
    )
    assert store.last_serial == 3
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_state_survives_reopen_and_rollback(tmp_path):
    store = SlotStore(tmp_path)
    install(store, tmp_path, 1, b"a" * 50)
    install(store, tmp_path, 2, b"b" * 50)
    store.record_outcome(5, "f" * 64)
    again = SlotStore(tmp_path)
    assert again.active.info.serial == 2
    assert again.previous.info.serial == 1
    assert again.last_serial == 5
    assert again.last_manifest_sha256 == "f" * 64
    again.roll_back()
    assert again.active.info.serial == 1
    assert again.previous is None
    assert SlotStore(tmp_path).active.info.serial == 1
    with pytest.raises(LookupError):
        again.roll_back()


def test_check_artifact_detects_corruption_and_truncation(tmp_path):
    store = SlotStore(tmp_path)
    slot = install(store, tmp_path, 1, b"x" * 1000)
    SlotStore.check_artifact(slot)
    data = bytearray(slot.path.read_bytes())
    data[10] ^= 1
    slot.path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError):
        SlotStore.check_artifact(slot)
    slot.path.write_bytes(b"short")
    with pytest.raises(LengthMismatchError):
        SlotStore.check_artifact(slot)


def test_unreadable_state_starts_empty(tmp_path):
    (tmp_path / "slots.json").write_text("{torn")
    store = SlotStore(tmp_path)
    assert store.active is None
    assert store.last_serial == 0


def test_state_file_is_plain_json_naming_hashes(tmp_path):
    store = SlotStore(tmp_path)
    slot = install(store, tmp_path, 1, b"q" * 10)
    state = json.loads((tmp_path / "slots.json").read_text())
    assert (
        state["active"]["manifest"]["artifact"]["sha256"] == hashlib.sha256(b"q" * 10).hexdigest()
    )
    assert slot.path.read_bytes() == b"q" * 10
