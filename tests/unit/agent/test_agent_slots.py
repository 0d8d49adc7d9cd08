"""edgefleet.agent.slots: active/previous rotation, atomic state, corruption detection, the
last outcome, renewal, and writes that fail without changing anything."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.agent.slots import SlotStore
from edgefleet.shared import (
    HashMismatchError,
    LengthMismatchError,
    Outcome,
    OutcomeResult,
    generate_signing_key,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.signing import public_key_of
from support.samples import make_manifest
from support.tmpfs import fill_up, small_tmpfs

KEY = generate_signing_key()
PUB = public_key_of(KEY)


def downloaded(store: SlotStore, serial: int, data: bytes):
    """A verified manifest for ``data`` and its finished download in the store."""
    manifest = make_manifest(
        serial=serial, data=data, created_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    signed = sign_manifest(manifest, KEY)
    verified = verify_manifest(signed, PUB, device_id="pi-001")
    download = store.downloads_dir / manifest.artifact.sha256
    download.write_bytes(data)
    return verified, signed, download


def install(store: SlotStore, tmp_path, serial: int, data: bytes):
    return store.install(*downloaded(store, serial, data))


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


def outcome(serial: int, result: OutcomeResult = OutcomeResult.SWAPPED) -> Outcome:
    return Outcome(
        serial=serial, sha256="a" * 64, result=result, reason="why", at=datetime.now(UTC)
    )


def test_last_outcome_is_saved_with_the_serial(tmp_path):
    store = SlotStore(tmp_path)
    assert store.last_outcome is None
    refused = outcome(3, OutcomeResult.REFUSED)
    assert store.record_outcome(3, "d" * 64, refused)
    again = SlotStore(tmp_path)
    assert again.last_outcome == refused
    assert (again.last_serial, again.last_manifest_sha256) == (3, "d" * 64)


def test_renew_replaces_the_active_manifest_only(tmp_path):
    store = SlotStore(tmp_path)
    first = install(store, tmp_path, 1, b"one" * 100)
    data = b"one" * 100
    manifest = make_manifest(
        serial=7, data=data, created_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    signed = sign_manifest(manifest, KEY)
    verified = verify_manifest(signed, PUB, device_id="pi-001")
    slot = store.renew(verified, signed, "e" * 64, outcome(7))
    assert slot.path == first.path
    again = SlotStore(tmp_path)
    assert again.active.info.serial == 7
    assert again.previous is None
    assert (again.last_serial, again.last_manifest_sha256) == (7, "e" * 64)
    assert again.last_outcome.serial == 7
    other = make_manifest(serial=8, data=b"two" * 100, created_at=manifest.created_at)
    signed_other = sign_manifest(other, KEY)
    with pytest.raises(ValueError, match="does not renew"):
        store.renew(verify_manifest(signed_other, PUB), signed_other, "f" * 64, outcome(8))


def test_a_failed_write_changes_nothing(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        store = SlotStore(disk, durable=False)
        install(store, disk, 1, b"a" * 50)
        install(store, disk, 2, b"b" * 50)
        on_disk = (disk / "slots.json").read_bytes()
        third = downloaded(store, 3, b"c" * 50)  # its download finished before the disk filled
        fill_up(disk)
        with pytest.raises(OSError, match="No space"):
            store.roll_back(outcome(2, OutcomeResult.REFUSED))
        assert (store.active.info.serial, store.previous.info.serial) == (2, 1)
        assert store.last_outcome is None
        with pytest.raises(OSError, match="No space"):
            store.install(*third)
        assert store.active.info.serial == 2
        # the artifact moved into place stays there for the next attempt
        assert (store.artifacts_dir / hashlib.sha256(b"c" * 50).hexdigest()).exists()
        # an outcome holds in memory (this run reports it) even when it cannot be saved
        assert not store.record_outcome(4, "f" * 64, outcome(4, OutcomeResult.IO_ERROR))
        assert (store.last_serial, store.last_outcome.result) == (4, "io_error")
        assert (disk / "slots.json").read_bytes() == on_disk
        assert SlotStore(disk).active.info.serial == 2  # what a restart would find


def test_a_download_in_progress_is_not_collected(tmp_path):
    store = SlotStore(tmp_path)
    install(store, tmp_path, 1, b"a" * 50)
    pending = store.artifacts_dir / ("c" * 64)
    pending.write_bytes(b"c")
    store.in_progress = "c" * 64
    store.record_outcome(2, "d" * 64)
    assert pending.exists()
    store.in_progress = None
    store.record_outcome(3, "e" * 64)
    assert not pending.exists()
