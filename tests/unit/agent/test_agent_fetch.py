"""edgefleet.agent.fetch over HTTP: Range requests, servers that ignore Range, bad bytes."""

from __future__ import annotations

import errno
import hashlib
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent.errors import StorageError
from edgefleet.agent.fetch import HttpRangeFetcher, _runs
from edgefleet.agent.settings import AgentSettings
from edgefleet.shared import ArtifactRef, DownloadError, HashMismatchError, Reassembler
from support.tmpfs import fill_up, small_tmpfs

DATA = bytes(range(256)) * 10
CHUNK = 100


def serve(body: bytes, honour_range: bool):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            return

        def do_GET(self) -> None:
            header = self.headers.get("Range")
            payload, status = body, 200
            if honour_range and header:
                start, end = (int(v) for v in header.removeprefix("bytes=").split("-"))
                payload, status = body[start : end + 1], 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fetch-test-http", daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def settings(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("x")
    return AgentSettings(
        device_id="d", controller_key=key, data_dir=tmp_path, http_timeout_s=5, max_bad_chunks=2
    )


def artifact(url: str) -> ArtifactRef:
    chunks = [DATA[i : i + CHUNK] for i in range(0, len(DATA), CHUNK)]
    return ArtifactRef(
        sha256=hashlib.sha256(DATA).hexdigest(),
        size=len(DATA),
        chunk_size=CHUNK,
        chunk_sha256=tuple(hashlib.sha256(c).hexdigest() for c in chunks),
        http_url=url,
    )


def reassembler(tmp_path, ref: ArtifactRef) -> Reassembler:
    return Reassembler(
        tmp_path / "out",
        sha256=ref.sha256,
        size=ref.size,
        chunk_size=ref.chunk_size,
        chunk_sha256=ref.chunk_sha256,
        durable=False,
    )


@pytest.mark.parametrize("honour_range", [True, False])
def test_fetches_only_missing_runs(tmp_path, settings, honour_range):
    server, thread = serve(DATA, honour_range)
    try:
        ref = artifact(f"http://127.0.0.1:{server.server_address[1]}/a")
        target = reassembler(tmp_path, ref)
        for index in (0, 1, 5):  # already on disk from an earlier attempt
            target.accept(index, DATA[index * CHUNK : (index + 1) * CHUNK])
        fetcher = HttpRangeFetcher(settings)
        fetcher.fetch(ref, target, time.monotonic() + 10, threading.Event())
        assert sorted(fetcher.last.requested) == [
            i for i in range(ref.chunk_count) if i not in (0, 1, 5)
        ]
        assert target.finalize().read_bytes() == DATA
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tampered_bytes_are_refused(tmp_path, settings):
    server, thread = serve(bytes(len(DATA)), True)
    try:
        ref = artifact(f"http://127.0.0.1:{server.server_address[1]}/a")
        with pytest.raises(HashMismatchError):
            HttpRangeFetcher(settings).fetch(
                ref, reassembler(tmp_path, ref), time.monotonic() + 10, threading.Event()
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_unreachable_server_is_a_download_error(tmp_path, settings):
    from support.mosquitto import free_port

    ref = artifact(f"http://127.0.0.1:{free_port()}/a")
    with pytest.raises(DownloadError):
        HttpRangeFetcher(settings).fetch(
            ref, reassembler(tmp_path, ref), time.monotonic() + 10, threading.Event()
        )


def test_a_chunk_that_cannot_be_written_is_a_storage_error(tmp_path, settings):
    server, thread = serve(DATA, True)
    try:
        ref = artifact(f"http://127.0.0.1:{server.server_address[1]}/a")
        with small_tmpfs(tmp_path / "disk", "256k") as disk:
            target = reassembler(disk, ref)
            fill_up(disk)  # the disk fills up once the download has begun
            with pytest.raises(StorageError, match=r"storing chunk 0 in .*") as raised:
                HttpRangeFetcher(settings).fetch(
                    ref, target, time.monotonic() + 10, threading.Event()
                )
        assert raised.value.errno == errno.ENOSPC  # not mistaken for a failing server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_idle_runs_while_a_long_response_is_read(tmp_path, settings):
    settings = settings.model_copy(update={"idle_every_s": 1e-6})
    server, thread = serve(DATA, True)
    try:
        ref = artifact(f"http://127.0.0.1:{server.server_address[1]}/a")
        calls = 0

        def idle() -> None:
            nonlocal calls
            calls += 1

        HttpRangeFetcher(settings).fetch(
            ref, reassembler(tmp_path, ref), time.monotonic() + 10, threading.Event(), idle
        )
        assert calls > ref.chunk_count  # one range request, but idle between its chunks
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_runs():
    assert _runs([]) == []
    assert _runs([0, 1, 2, 5, 7, 8]) == [(0, 2), (5, 5), (7, 8)]


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_runs_cover_exactly_the_indices(indices):
    runs = _runs(sorted(indices))
    covered = [i for first, last in runs for i in range(first, last + 1)]
    assert covered == sorted(indices)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))  # maximal runs
