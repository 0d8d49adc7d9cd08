import hashlib
import tracemalloc

from edgefleet.shared.hashing import sha256_bytes, sha256_file, sha256_stream


def test_sha256_file_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 5000
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path, block_size=4096) == hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert sha256_stream([data[:10], data[10:]]) == (hashlib.sha256(data).hexdigest(), len(data))


def test_sha256_file_uses_bounded_memory_on_a_large_file(tmp_path):
    path = tmp_path / "big.bin"
    with path.open("wb") as f:  # 256 MiB sparse file: cheap on disk, large to hash
        f.truncate(256 * 1024 * 1024)
    tracemalloc.start()
    digest = sha256_file(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    expected = hashlib.sha256()
    block = b"\0" * (1024 * 1024)
    for _ in range(256):
        expected.update(block)
    assert digest == expected.hexdigest()
    assert peak < 8 * 1024 * 1024
