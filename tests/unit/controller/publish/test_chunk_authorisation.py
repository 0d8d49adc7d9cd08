"""The chunk server serves a device only the artifacts it was issued a manifest for (read from a
real database, SQLite and PostgreSQL, and cached), the golden files and chunk indexes those
manifests name, and only indices the artifact has."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.config import Settings
from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.publish.chunk_server import ChunkServer, IssuedArtifacts
from edgefleet.controller.publish.manifests import ManifestSigner
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.service import open_database
from edgefleet.shared import (
    ChunkRequest,
    GoldenPair,
    GoldenSet,
    IOSignature,
    Manifest,
    TensorData,
    TensorSpec,
    Topics,
    decode_chunk_frame,
    encode,
    generate_signing_key,
)
from support.registry import fake_artifact

CHUNK = 1024
X = TensorData(dtype="float32", shape=(1, 1), data_b64=base64.b64encode(bytes(4)).decode())
SIGNATURE = IOSignature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=(1, 1)),),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(1, 1)),),
)


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
        self.topics: list[str] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.indices.append(decode_chunk_frame(payload)[0].index)
        self.topics.append(topic)


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


def test_chunk_indexes_are_served_only_to_devices_issued_the_files_they_index(
    sessions, tmp_path
) -> None:
    store = ArtifactStore(tmp_path / "store")
    new = fake_artifact(tmp_path / "build", "onnx-fp32", bytes(range(256)) * 12)
    sha, size = store.put_file(new.file)
    golden = GoldenSet(pairs=(GoldenPair(inputs={"x": X}, outputs={"y": X}),))
    artifact = ArtifactRecord(
        model="tiny", version="1", target="onnx-fp32", runtime="onnxruntime", sha256=sha,
        size=size, path=store.path_for(sha), signature=SIGNATURE, golden=golden,
        latency_budget_ms=5.0, report=new.report, created_at=datetime.now(UTC),
    )  # fmt: skip
    signer = ManifestSigner(
        generate_signing_key(), Topics(), public_url="http://c", chunk_size=CHUNK,
        ttl=timedelta(hours=1), urls=ArtifactUrlSigner(b"k" * 32), store=store,
    )  # fmt: skip
    signed = signer.sign("issued", artifact, 1, wire_version=2)
    manifest = Manifest.model_validate(signed.manifest)
    assert manifest.golden_ref is not None
    artifact_index, golden_index = manifest.artifact.chunk_index, manifest.golden_ref.chunk_index
    assert artifact_index is not None
    assert golden_index is not None
    with sessions.begin() as session:  # the row the engine writes when it signs that manifest
        rollout = RolloutRow(
            model="tiny", version="1", selector="all", waves=[1], wave_spec="100%",
            policy={}, status="running",
        )  # fmt: skip
        rollout.devices = [
            RolloutDeviceRow(
                device_id="issued", wave=0, state="sent", sha256=sha, serial=1,
                signed_manifest=encode(signed).decode(),
                golden_sha256=manifest.golden_ref.sha256,
                index_sha256=artifact_index.sha256, golden_index_sha256=golden_index.sha256,
            ),
        ]  # fmt: skip
        session.add(rollout)
    sent = Sent()
    server = ChunkServer(
        store, Topics(), sent, chunk_size=CHUNK, gather_s=0.0, issued=IssuedArtifacts(sessions)
    )

    async def scenario() -> None:
        runner = asyncio.create_task(server.run(), name="chunk-server")
        for index in (artifact_index, golden_index):
            server.request(ChunkRequest(device_id="stranger", sha256=index.sha256, indices=(0,)))
        await until(lambda: server.requests_refused == 2)
        for index in (artifact_index, golden_index):
            server.request(ChunkRequest(device_id="issued", sha256=index.sha256, indices=(0,)))
        await until(lambda: len(sent.indices) == 2)
        runner.cancel()

    asyncio.run(scenario())
    assert server.refused == {"not_issued": 2}
    assert sorted(sent.topics) == sorted(
        Topics().artifact_chunks(i.sha256) for i in (artifact_index, golden_index)
    )
