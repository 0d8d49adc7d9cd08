"""The chunk server: one publish serves every device of a burst; no request goes unanswered."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from edgefleet.controller.publish.chunk_server import ChunkServer
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.shared import ChunkRequest, Topics, decode_chunk_frame

CHUNK = 1024


@pytest.fixture
def stored(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "artifact.bin"
    source.write_bytes(bytes(range(256)) * 12)  # 3 chunks of 1 KiB
    sha, _ = store.put_file(source)
    return store, sha


class Recorder:
    """The publish side of the server, recording what went out and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.sent.append((time.monotonic(), topic, payload))

    def indices(self) -> list[int]:
        return sorted(decode_chunk_frame(p)[0].index for _, _, p in self.sent)


def test_a_burst_of_requests_is_served_by_one_send_per_chunk(stored):
    store, sha = stored
    sent = Recorder()
    server = ChunkServer(store, Topics(), sent, chunk_size=CHUNK, coalesce_s=1.0, gather_s=0.1)

    async def scenario() -> None:
        runner = asyncio.create_task(server.run())
        for device in range(20):  # devices asking one after another, 10 ms apart
            server.request(ChunkRequest(device_id=f"d{device}", sha256=sha, indices=(0, 1, 2)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        runner.cancel()

    asyncio.run(scenario())
    assert sent.indices() == [0, 1, 2]
    for _, topic, payload in sent.sent:
        header, data = decode_chunk_frame(payload)
        assert topic == Topics().artifact_chunks(sha)
        assert hashlib.sha256(data).hexdigest() == header.chunk_sha256
        assert header.count == 3


def test_a_late_request_is_deferred_to_the_window_end_not_dropped(stored):
    store, sha = stored
    sent = Recorder()
    server = ChunkServer(store, Topics(), sent, chunk_size=CHUNK, coalesce_s=0.3, gather_s=0.0)

    async def scenario() -> None:
        runner = asyncio.create_task(server.run())
        server.request(ChunkRequest(device_id="early", sha256=sha, indices=(1,)))
        await asyncio.sleep(0.05)
        server.request(ChunkRequest(device_id="late", sha256=sha, indices=(1,)))
        await asyncio.sleep(0.6)
        runner.cancel()

    asyncio.run(scenario())
    assert sent.indices() == [1, 1]
    first, second = sent.sent[0][0], sent.sent[1][0]
    assert second - first == pytest.approx(0.3, abs=0.15)


def test_unknown_artifacts_and_chunks_are_refused(stored):
    store, sha = stored
    sent = Recorder()
    server = ChunkServer(store, Topics(), sent, chunk_size=CHUNK, gather_s=0.0)

    async def scenario() -> None:
        runner = asyncio.create_task(server.run())
        server.request(ChunkRequest(device_id="d", sha256="f" * 64, indices=(0,)))
        server.request(ChunkRequest(device_id="d", sha256=sha, indices=(7,)))
        await asyncio.sleep(0.2)
        runner.cancel()

    asyncio.run(scenario())
    assert server.requests_refused == 1
    assert sent.sent == []
