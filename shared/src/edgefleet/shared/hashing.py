"""Streaming sha256 of files and byte streams in bounded memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

READ_BLOCK = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, block_size: int = READ_BLOCK) -> str:
    """Hex sha256 of a file of any size, reading ``block_size`` bytes at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def sha256_stream(blocks: Iterable[bytes]) -> tuple[str, int]:
    """Hex sha256 and total length of a stream of byte blocks."""
    digest = hashlib.sha256()
    total = 0
    for block in blocks:
        digest.update(block)
        total += len(block)
    return digest.hexdigest(), total
