import errno
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.shared import (
    ChunkBitmap,
    HashMismatchError,
    LengthMismatchError,
    Reassembler,
    chunk_digests,
    iter_chunks,
)
from edgefleet.shared.chunks import read_chunk
from support.tmpfs import small_tmpfs


def _artifact(tmp_path, size, chunk_size, seed=0):
    data = os.urandom(size) if seed == 0 else bytes((i * seed) % 251 for i in range(size))
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    return src, data, chunk_digests(src, chunk_size)


def _reassembler(dest, data, chunk_size, digests, durable=False):
    return Reassembler(
        dest,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=digests,
        durable=durable,
    )


def test_chunker_yields_index_bytes_and_hash(tmp_path):
    src, data, _ = _artifact(tmp_path, 1000, 300)
    chunks = list(iter_chunks(src, 300))
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [len(c.data) for c in chunks] == [300, 300, 300, 100]
    assert b"".join(c.data for c in chunks) == data
    assert all(hashlib.sha256(c.data).hexdigest() == c.sha256 for c in chunks)
    assert read_chunk(src, 3, 300).data == data[900:]
    with pytest.raises(IndexError):
        read_chunk(src, 4, 300)


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=5000),
    chunk_size=st.integers(min_value=1, max_value=700),
    order_seed=st.randoms(use_true_random=False),
)
def test_random_chunk_orders_reassemble(tmp_path_factory, size, chunk_size, order_seed):
    tmp = tmp_path_factory.mktemp("r")
    src, data, digests = _artifact(tmp, size, chunk_size, seed=7)
    chunks = list(iter_chunks(src, chunk_size))
    order_seed.shuffle(chunks)
    r = _reassembler(tmp / "out.bin", data, chunk_size, digests)
    for chunk in chunks:
        assert r.accept(chunk.index, chunk.data)
        assert not r.accept(chunk.index, chunk.data)  # duplicates change nothing
    assert r.finalize().read_bytes() == data
    assert not r.partial.exists()
    assert not r.bitmap_path.exists()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_in_a_chunk_is_refused(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("f")
    src, content, digests = _artifact(tmp, 2000, 512, seed=3)
    chunks = list(iter_chunks(src, 512))
    chunk = chunks[data.draw(st.integers(0, len(chunks) - 1))]
    tampered = bytearray(chunk.data)
    tampered[data.draw(st.integers(0, len(tampered) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    r = _reassembler(tmp / "out.bin", content, 512, digests)
    with pytest.raises(HashMismatchError) as err:
        r.accept(chunk.index, bytes(tampered))
    assert err.value.expected == chunk.sha256
    assert r.missing() == list(range(len(chunks)))


def test_wrong_length_and_index_are_refused(tmp_path):
    _, data, digests = _artifact(tmp_path, 1000, 300)
    r = _reassembler(tmp_path / "out.bin", data, 300, digests)
    with pytest.raises(LengthMismatchError):
        r.accept(0, data[:299])
    with pytest.raises(IndexError):
        r.accept(4, b"x")
    with pytest.raises(ValueError, match="missing"):
        r.finalize()


def test_resume_after_restart_needs_only_missing_chunks(tmp_path):
    src, data, digests = _artifact(tmp_path, 10_000, 1000)
    chunks = list(iter_chunks(src, 1000))
    dest = tmp_path / "out.bin"
    first = _reassembler(dest, data, 1000, digests, durable=True)
    for chunk in chunks[::2]:
        first.accept(chunk.index, chunk.data)
    del first  # the process dies here; the partial file and bitmap stay on disk
    second = _reassembler(dest, data, 1000, digests, durable=True)
    assert second.resumed_chunks == 5
    assert second.missing() == [1, 3, 5, 7, 9]
    for index in second.missing():
        second.accept(index, chunks[index].data)
    assert second.finalize().read_bytes() == data


def test_resume_drops_chunks_corrupted_on_disk(tmp_path):
    src, data, digests = _artifact(tmp_path, 4000, 1000)
    dest = tmp_path / "out.bin"
    first = _reassembler(dest, data, 1000, digests)
    for chunk in iter_chunks(src, 1000):
        first.accept(chunk.index, chunk.data)
    with first.partial.open("r+b") as f:  # a torn write after the bitmap claimed chunk 2
        f.seek(2500)
        f.write(b"\xff" * 10)
    second = _reassembler(dest, data, 1000, digests)
    assert second.missing() == [2]


def test_a_bitmap_for_another_artifact_starts_over(tmp_path):
    _, data, digests = _artifact(tmp_path, 3000, 1000)
    dest = tmp_path / "out.bin"
    first = _reassembler(dest, data, 1000, digests)
    first.accept(0, data[:1000])
    other = os.urandom(3000)
    other_digests = [hashlib.sha256(other[i : i + 1000]).hexdigest() for i in range(0, 3000, 1000)]
    second = _reassembler(dest, other, 1000, other_digests)
    assert second.missing() == [0, 1, 2]


def test_finalize_refuses_a_whole_file_hash_mismatch(tmp_path):
    src, _, digests = _artifact(tmp_path, 2000, 1000)
    r = Reassembler(
        tmp_path / "out.bin",
        sha256="0" * 64,
        size=2000,
        chunk_size=1000,
        chunk_sha256=digests,
        durable=False,
    )
    for chunk in iter_chunks(src, 1000):
        r.accept(chunk.index, chunk.data)
    with pytest.raises(HashMismatchError):
        r.finalize()
    assert not (tmp_path / "out.bin").exists()
    assert not r.partial.exists()


@given(st.sets(st.integers(0, 99)))
def test_bitmap_tracks_membership_and_serialises(indices):
    bitmap = ChunkBitmap(100)
    for i in indices:
        bitmap.set(i)
    restored = ChunkBitmap(100, bitmap.to_bytes())
    assert restored.present == len(indices)
    assert set(restored.missing()) == set(range(100)) - indices
    assert restored.is_complete() == (len(indices) == 100)


def test_a_disk_that_fills_up_mid_chunk_is_an_os_error_not_a_stored_chunk(tmp_path):
    """On a full disk a write can be short without raising: the chunk must not count."""
    with small_tmpfs(tmp_path / "small", "40k") as mount:
        data = os.urandom(128 * 1024)
        chunk = 16 * 1024
        digests = [
            hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)
        ]
        reassembler = Reassembler(
            mount / "artifact",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            chunk_size=chunk,
            chunk_sha256=tuple(digests),
            durable=False,
        )
        stored = []

        def store_every_chunk() -> None:
            for index in range(len(digests)):
                reassembler.accept(index, data[index * chunk : (index + 1) * chunk])
                stored.append(index)

        with pytest.raises(OSError, match=r"No space left|wrote \d+ of") as err:
            store_every_chunk()
        assert err.value.errno == errno.ENOSPC
        assert not reassembler.bitmap.has(len(stored))  # the chunk that did not fit is not claimed
        assert all(reassembler.bitmap.has(i) for i in stored)
