"""The content-addressed store: blobs named by sha256, idempotent, verified on read."""

from __future__ import annotations

import hashlib

import pytest

from edgefleet.controller.errors import ArtifactStoreError
from edgefleet.controller.registry.store import ArtifactStore


def test_put_is_content_addressed_and_idempotent(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "a.bin"
    src.write_bytes(b"hello artifact")
    sha, size = store.put_file(src)
    assert sha == hashlib.sha256(b"hello artifact").hexdigest()
    assert size == 14
    assert store.path_for(sha) == tmp_path / "store" / sha[:2] / sha
    assert store.put_file(src) == (sha, size)
    assert store.blob_count() == 1
    assert store.verify(sha).read_bytes() == b"hello artifact"
    assert not list((tmp_path / "store").rglob(".incoming-*"))


def test_verify_detects_corruption_and_absence(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 100)
    sha, _ = store.put_file(src)
    store.path_for(sha).write_bytes(b"y" * 100)
    with pytest.raises(ArtifactStoreError, match="corrupt"):
        store.verify(sha)
    with pytest.raises(ArtifactStoreError, match="missing"):
        store.verify("0" * 64)


def test_path_for_refuses_non_hashes(tmp_path) -> None:
    with pytest.raises(ArtifactStoreError):
        ArtifactStore(tmp_path).path_for("../../etc/passwd")
