"""Content-addressed artifact store on disk: blobs named by sha256, written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgefleet.controller.errors import ArtifactStoreError
from edgefleet.shared.hashing import sha256_file

_HEX = frozenset("0123456789abcdef")


class ArtifactStore:
    """Blobs at ``root/<sha[:2]>/<sha>``; a blob is only ever visible complete."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise ArtifactStoreError(sha256, "not a lowercase hex sha256")
        return self.root / sha256[:2] / sha256

    def contains(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` into the store; returns its sha256 and size. Idempotent."""
        sha = sha256_file(source)
        size = source.stat().st_size
        dest = self.path_for(sha)
        if dest.is_file() and dest.stat().st_size == size:
            return sha, size
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, length=1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            if sha256_file(tmp) != sha:
                raise ArtifactStoreError(sha, f"{source} changed while it was being stored")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` as a blob; returns its sha256 and size. Idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return self.put_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def verify(self, sha256: str) -> Path:
        """The blob's path after re-hashing it.

        Raises:
            ArtifactStoreError: the blob is missing or its bytes do not hash to ``sha256``.
        """
        path = self.path_for(sha256)
        if not path.is_file():
            raise ArtifactStoreError(sha256, f"missing from {self.root}")
        actual = sha256_file(path)
        if actual != sha256:
            raise ArtifactStoreError(sha256, f"corrupt: bytes hash to {actual}")
        return path

    def blob_count(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for p in self.root.glob("??/*") if not p.name.startswith("."))
