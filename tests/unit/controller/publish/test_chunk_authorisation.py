"""The chunk server serves a device only the artifacts it was issued a manifest for (read from a
real database, SQLite and PostgreSQL, and cached), and only indices the artifact has."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.config import Settings
from edgefleet.controller.publish.chunk_server import ChunkServer, IssuedArtifacts
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.service import open_database
from edgefleet.shared import ChunkRequest, Topics, decode_chunk_frame

CHUNK = 1024


@pytest.fixture
def sessions(database_url: str, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, sessions = open_database(Settings(database_url=database_url, data_dir=tmp_path))
    yield sessions
    engine.dispose()


@pytest.fixture
def stored(tmp_path: Path) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "artifact.bin"
    source.write_bytes(bytes(range(256)) * 12)  # 3 chunks of 1 KiB
    sha, _ = store.put_file(source)
    return store, sha


def issue(sessions: sessionmaker[Session], sha256: str) -> None:
    """A rollout of the artifact: "issued" got its manifest; "planned" is in it, not yet sent."""
    with sessions.begin() as session:
        rollout = RolloutRow(
            model="tiny", version="1", selector="all", waves=[2], wave_spec="100%",
            policy={}, status="running",
        )  # fmt: skip
        rollout.devices = [
            RolloutDeviceRow(
                device_id="issued", wave=0, state="sent", sha256=sha256, serial=1,
                signed_manifest='{"signed": "manifest"}',
            ),
            RolloutDeviceRow(device_id="planned", wave=0, state="planned", sha256=sha256),
        ]  # fmt: skip
        session.add(rollout)


class Sent:
    def __init__(self) -> None:
        self.indices: list[int] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.indices.append(decode_chunk_frame(payload)[0].index)


async def until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_only_devices_issued_the_artifact_are_served(sessions, stored) -> None:
    store, sha = stored
    issue(sessions, sha)
    issued = IssuedArtifacts(sessions, ttl_s=60.0)
    sent = Sent()
    server = ChunkServer(store, Topics(), sent, chunk_size=CHUNK, gather_s=0.0, issued=issued)

    async def scenario() -> None:
        runner = asyncio.create_task(server.run(), name="chunk-server")
        for device in ("issued", "stranger", "planned"):
            server.request(ChunkRequest(device_id=device, sha256=sha, indices=(0, 1, 2)))
        await until(lambda: len(sent.indices) == 3 and server.requests_refused == 2)
        # A burst: answered from the cache, not one query per request.
        for _ in range(50):
            server.request(ChunkRequest(device_id="stranger", sha256=sha, indices=(0,)))
            server.request(ChunkRequest(device_id="issued", sha256=sha, indices=(1,)))
        await until(lambda: len(sent.indices) >= 4)
        runner.cancel()

    asyncio.run(scenario())
    assert sorted(sent.indices[:3]) == [0, 1, 2]
    assert set(sent.indices[3:]) == {1}  # the stranger's requests for chunk 0 sent nothing
    assert server.refused == {"not_issued": 2 + 50}
    assert server.requests_refused == 52
    assert issued.lookups == 1  # the first three waited for one lookup together


def test_indices_beyond_the_artifact_are_dropped(sessions, stored) -> None:
    store, sha = stored
    issue(sessions, sha)
    sent = Sent()
    server = ChunkServer(
        store, Topics(), sent, chunk_size=CHUNK, gather_s=0.0, issued=IssuedArtifacts(sessions)
    )

    async def scenario() -> None:
        runner = asyncio.create_task(server.run(), name="chunk-server")
        server.request(ChunkRequest(device_id="issued", sha256=sha, indices=(2, 3, 900, 2)))
        server.request(ChunkRequest(device_id="issued", sha256=sha, indices=(65_000,)))
        await until(lambda: sent.indices == [2])
        runner.cancel()

    asyncio.run(scenario())
    assert server.indices_dropped == 3
    assert server.requests_refused == 0


def test_a_device_issued_the_artifact_after_being_refused_is_served_once_the_answer_expires(
    sessions, stored
) -> None:
    store, sha = stored
    issued = IssuedArtifacts(sessions, ttl_s=0.2)
    sent = Sent()
    server = ChunkServer(store, Topics(), sent, chunk_size=CHUNK, gather_s=0.0, issued=issued)

    async def scenario() -> None:
        runner = asyncio.create_task(server.run(), name="chunk-server")
        server.request(ChunkRequest(device_id="issued", sha256=sha, indices=(0,)))
        await until(lambda: server.requests_refused == 1)
        await asyncio.to_thread(issue, sessions, sha)
        await until(lambda: issued.cached("issued", sha) is None)
        server.request(ChunkRequest(device_id="issued", sha256=sha, indices=(0,)))
        await until(lambda: sent.indices == [0])
        runner.cancel()

    asyncio.run(scenario())
    assert server.refused == {"not_issued": 1}
