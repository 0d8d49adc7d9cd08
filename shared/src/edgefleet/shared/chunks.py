"""Splitting artifacts into hashed chunks and reassembling them, resumably, on the other side.

The reassembler writes chunks in any order into a partial file beside the destination and
persists a bitmap of what it holds, so a process killed mid-download resumes with only the
missing chunks. Data is fsynced before the bitmap claims it; the final file appears through an
atomic rename only once its whole sha256 matches.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefleet.shared.errors import HashMismatchError, LengthMismatchError
from edgefleet.shared.hashing import sha256_file


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    data: bytes
    sha256: str


def iter_chunks(path: Path, chunk_size: int) -> Iterator[Chunk]:
    """Yield the chunks of a file in order, reading one chunk at a time."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with path.open("rb") as f:
        index = 0
        while data := f.read(chunk_size):
            yield Chunk(index, data, hashlib.sha256(data).hexdigest())
            index += 1


def read_chunk(path: Path, index: int, chunk_size: int) -> Chunk:
    """Read one chunk of a file by index.

    Raises:
        IndexError: the file has no such chunk.
    """
    with path.open("rb") as f:
        f.seek(index * chunk_size)
        data = f.read(chunk_size)
    if index < 0 or not data:
        raise IndexError(f"{path} has no chunk {index} of size {chunk_size}")
    return Chunk(index, data, hashlib.sha256(data).hexdigest())


def chunk_digests(path: Path, chunk_size: int) -> list[str]:
    return [c.sha256 for c in iter_chunks(path, chunk_size)]


class ChunkBitmap:
    """Which of ``count`` chunks are present, serialisable to bytes."""

    __slots__ = ("_bits", "_present", "count")

    def __init__(self, count: int, bits: bytes | None = None) -> None:
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        self.count = count
        size = (count + 7) // 8
        if bits is not None and len(bits) != size:
            raise ValueError(f"bitmap of {len(bits)} bytes does not fit {count} chunks")
        self._bits = bytearray(bits if bits is not None else size)
        self._present = sum(self.has(i) for i in range(count))

    def has(self, index: int) -> bool:
        self._check(index)
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def set(self, index: int) -> bool:
        """Mark ``index`` present; return False if it already was."""
        if self.has(index):
            return False
        self._bits[index >> 3] |= 1 << (index & 7)
        self._present += 1
        return True

    def clear(self, index: int) -> None:
        if self.has(index):
            self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
            self._present -= 1

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if not self.has(i)]

    @property
    def present(self) -> int:
        return self._present

    def is_complete(self) -> bool:
        return self._present == self.count

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"chunk index {index} outside 0..{self.count - 1}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Reassembler:
    """Reassemble one artifact from chunks received in any order, across restarts.

    Files: ``<dest>.partial`` (preallocated data) and ``<dest>.bitmap`` (JSON: what the partial
    file is for, and which chunks it holds). Opening a reassembler for the same artifact again
    resumes; for a different artifact it starts over.
    """

    def __init__(
        self,
        dest: Path,
        *,
        sha256: str,
        size: int,
        chunk_size: int,
        chunk_sha256: list[str] | tuple[str, ...],
        durable: bool = True,
    ) -> None:
        expected_count = -(-size // chunk_size)
        if len(chunk_sha256) != expected_count:
            raise ValueError(f"{len(chunk_sha256)} chunk hashes for {expected_count} chunks")
        self.dest = dest
        self.sha256 = sha256
        self.size = size
        self.chunk_size = chunk_size
        self.chunk_sha256 = tuple(chunk_sha256)
        self.durable = durable
        self.partial = dest.with_name(dest.name + ".partial")
        self.bitmap_path = dest.with_name(dest.name + ".bitmap")
        self.bitmap = ChunkBitmap(expected_count)
        self.resumed_chunks = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _identity(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size, "chunk_size": self.chunk_size}

    def _open(self) -> None:
        saved = self._load_bitmap()
        if saved is not None and self.partial.exists() and self.partial.stat().st_size == self.size:
            # Re-check every chunk the bitmap claims: a torn write must not pass as data.
            with self.partial.open("rb") as f:
                for index in range(saved.count):
                    if saved.has(index):
                        f.seek(index * self.chunk_size)
                        data = f.read(self._chunk_length(index))
                        if hashlib.sha256(data).hexdigest() == self.chunk_sha256[index]:
                            self.bitmap.set(index)
            self.resumed_chunks = self.bitmap.present
            return
        with self.partial.open("wb") as f:
            f.truncate(self.size)
        self._save_bitmap()

    def _load_bitmap(self) -> ChunkBitmap | None:
        try:
            saved = json.loads(self.bitmap_path.read_text())
            if saved.get("identity") != self._identity():
                return None
            return ChunkBitmap(self.bitmap.count, bytes.fromhex(saved["bits"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _save_bitmap(self) -> None:
        tmp = self.bitmap_path.with_name(self.bitmap_path.name + ".tmp")
        body = json.dumps({"identity": self._identity(), "bits": self.bitmap.to_bytes().hex()})
        with tmp.open("w") as f:
            f.write(body)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.bitmap_path)

    def _chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def missing(self) -> list[int]:
        return self.bitmap.missing()

    def is_complete(self) -> bool:
        return self.bitmap.is_complete()

    def accept(self, index: int, data: bytes) -> bool:
        """Store one chunk. Return False if it was already present.

        Raises:
            IndexError: no such chunk index.
            LengthMismatchError: the chunk has the wrong length.
            HashMismatchError: the chunk does not hash to its listed sha256.
        """
        if self.bitmap.has(index):
            return False
        expected_len = self._chunk_length(index)
        if len(data) != expected_len:
            raise LengthMismatchError(f"chunk {index}", expected_len, len(data))
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.chunk_sha256[index]:
            raise HashMismatchError(f"chunk {index}", self.chunk_sha256[index], actual)
        fd = os.open(self.partial, os.O_WRONLY)
        try:
            written = os.pwrite(fd, data, index * self.chunk_size)
            if written != len(data):  # a short write: the disk filled up mid-chunk
                raise OSError(
                    errno.ENOSPC, f"wrote {written} of {len(data)} bytes of chunk {index}"
                )
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self.bitmap.set(index)
        self._save_bitmap()
        return True

    def finalize(self) -> Path:
        """Check the whole file and move it into place atomically.

        Raises:
            ValueError: chunks are still missing.
            HashMismatchError: the assembled file does not hash to ``sha256`` (the partial
                download is discarded).
        """
        if not self.is_complete():
            raise ValueError(f"{len(self.missing())} chunks still missing")
        actual = sha256_file(self.partial)
        if actual != self.sha256:
            self.discard()
            raise HashMismatchError("artifact", self.sha256, actual)
        if self.durable:
            with self.partial.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(self.partial, self.dest)
        self.bitmap_path.unlink(missing_ok=True)
        if self.durable:
            _fsync_dir(self.dest.parent)
        return self.dest

    def discard(self) -> None:
        """Forget the partial download."""
        self.partial.unlink(missing_ok=True)
        self.bitmap_path.unlink(missing_ok=True)
