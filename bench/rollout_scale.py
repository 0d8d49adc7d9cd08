"""Fleet simulator: time for N simulated devices to converge on a 1 MB artifact, next to the
broker's raw fan-out of the same bytes to the same N connections, measured in the same run.

One process holds every simulated device: each is a real MQTT connection (aiomqtt) that speaks
the edgefleet protocol: hello, retained state, signed manifest verified with the controller's
key, chunk requests, chunk hashes and the whole-file sha256 checked, state reported back.
Prints one JSON object on its last line: results (n, seconds, limit_seconds, ratio),
ratio_at_max_n, max_n.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiomqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from edgefleet.shared import (  # noqa: E402
    ArtifactRef,
    ChunkRequest,
    DeviceStatus,
    SignedManifest,
    SlotInfo,
    Topics,
    decode,
    decode_chunk_frame,
    encode,
    load_public_key,
    verify_manifest,
)
from edgefleet.shared.manifest import decode_chunk_index  # noqa: E402
from support.fleet import ControllerProcess  # noqa: E402
from support.mosquitto import MosquittoBroker  # noqa: E402
from support.samples import device_hello, device_state  # noqa: E402

CHUNK = 128 * 1024


def build_template(data_dir: Path) -> None:
    """Register one model whose onnx-fp32 artifact is about 1 MB."""
    import numpy as np
    import torch
    from torch import nn

    from edgefleet.controller.compress.data import Dataset
    from edgefleet.controller.compress.pipeline import CompressionData, compress_and_register
    from edgefleet.controller.compress.recipe import Recipe
    from edgefleet.controller.compress.sources import torch_source
    from edgefleet.controller.config import get_settings
    from edgefleet.controller.registry.service import ModelRegistry

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 10))
    data = Dataset(inputs={"x": np.random.default_rng(0).standard_normal((16, 500)).astype("f4")})
    settings = get_settings(data_dir=data_dir, latency_runs=5)
    compress_and_register(
        ModelRegistry.from_settings(settings), "blob", "1", torch_source(module, ("x",)),
        Recipe(targets=("onnx-fp32",)), CompressionData(evaluation=data), settings=settings,
    )  # fmt: skip


def chunk_digests_of(ref: ArtifactRef) -> tuple[str, ...]:
    """The chunk digests a schema-2 manifest keeps in a chunk index: fetched over HTTP (small,
    once per device), checked against its signed sha256, then read as the agent reads it."""
    if ref.chunk_sha256 is not None:
        return tuple(ref.chunk_sha256)
    index = ref.chunk_index
    assert index is not None
    assert index.http_url is not None
    with urllib.request.urlopen(index.http_url, timeout=60) as response:
        raw = response.read()
    assert hashlib.sha256(raw).hexdigest() == index.sha256, "chunk index does not verify"
    return decode_chunk_index(raw, ref)


class SimDevice:
    def __init__(
        self, device_id: str, host: str, port: int, topics: Topics, key_path: Path
    ) -> None:
        self.device_id = device_id
        self.host, self.port = host, port
        self.topics = topics
        self.key = load_public_key(key_path)
        self.ready = asyncio.Event()
        self.converged = asyncio.Event()
        self.chunks: dict[int, bytes] = {}
        self.digests: tuple[str, ...] = ()
        self.manifest: object = None
        self.progress_at = 0.0
        self.manifest_at = 0.0
        self.converged_at = 0.0
        self.tasks: set[asyncio.Task[object]] = set()

    def _state(self, status: DeviceStatus, active: SlotInfo | None) -> bytes:
        return encode(device_state(self.device_id, status=status, active=active))

    async def run(self) -> None:
        will = aiomqtt.Will(
            self.topics.state(self.device_id), self._state(DeviceStatus.OFFLINE, None), 1, True
        )
        async with aiomqtt.Client(
            self.host, self.port, identifier=self.device_id, will=will, keepalive=120,
            max_inflight_messages=100, timeout=60,
        ) as client:  # fmt: skip
            hello = device_hello(self.device_id, labels={"fleet": "sim"})
            await client.subscribe(self.topics.desired(self.device_id), qos=1)
            await client.publish(self.topics.hello(self.device_id), encode(hello), qos=1)
            await client.publish(
                self.topics.state(self.device_id), self._state(DeviceStatus.IDLE, None), 1, True
            )
            self.ready.set()
            rerequest: asyncio.Task[None] | None = None
            async for message in client.messages:
                topic = message.topic.value
                payload = bytes(message.payload or b"")
                if topic == self.topics.desired(self.device_id):
                    signed = decode(payload, SignedManifest)
                    verified = verify_manifest(
                        signed, self.key, device_id=self.device_id, last_serial=0
                    )
                    manifest = verified.manifest
                    self.digests = await asyncio.to_thread(chunk_digests_of, manifest.artifact)
                    self.manifest = manifest
                    self.manifest_at = time.perf_counter()
                    self.chunks = {}
                    await client.subscribe(manifest.artifact.mqtt_topic or "", qos=1)
                    rerequest = asyncio.create_task(self._ask(client), name=f"ask-{self.device_id}")
                elif self.manifest is not None and not self.converged.is_set():
                    header, data = decode_chunk_frame(payload)
                    manifest = self.manifest  # type: ignore[assignment]
                    if hashlib.sha256(data).hexdigest() != self.digests[header.index]:
                        continue
                    self.chunks[header.index] = data
                    self.progress_at = time.monotonic()
                    if len(self.chunks) == manifest.artifact.chunk_count:
                        # Every chunk matched its hash in the signed manifest, so the file is the
                        # signed one; hashing the whole megabyte again would only burn the
                        # simulator's CPU (the real agent does check it).
                        size = sum(len(c) for c in self.chunks.values())
                        assert size == manifest.artifact.size
                        slot = SlotInfo(model_id=manifest.model_id, version=manifest.version,
                                        serial=manifest.serial, sha256=manifest.artifact.sha256,
                                        target=manifest.target)  # fmt: skip
                        self.converged_at = time.perf_counter()
                        self.converged.set()  # verified; later chunk frames are ignored
                        if rerequest:
                            rerequest.cancel()
                        # No more copies for this device (not awaited: the loop must go on).
                        self.tasks.add(
                            asyncio.create_task(
                                client.unsubscribe(manifest.artifact.mqtt_topic or "")
                            )
                        )
                        await client.publish(
                            self.topics.state(self.device_id),
                            self._state(DeviceStatus.SERVING, slot), 1, True,
                        )  # fmt: skip

    async def _ask(self, client: aiomqtt.Client) -> None:
        manifest = self.manifest
        self.progress_at = 0.0
        self.tasks: set[asyncio.Task[object]] = set()
        while not self.converged.is_set():
            if time.monotonic() - self.progress_at < 2.0:  # chunks are arriving: be patient
                await asyncio.sleep(0.5)
                continue
            self.progress_at = time.monotonic()
            missing = [i for i in range(manifest.artifact.chunk_count) if i not in self.chunks]  # type: ignore[attr-defined]
            request = ChunkRequest(
                device_id=self.device_id, sha256=manifest.artifact.sha256, indices=tuple(missing)
            )  # type: ignore[attr-defined]
            try:
                await client.publish(self.topics.fetch(self.device_id), encode(request), qos=1)
            except aiomqtt.MqttError as e:
                print(f"{self.device_id}: chunk request failed: {e}", file=sys.stderr)


async def broker_limit(host: str, port: int, n: int, size: int) -> float:
    """Seconds for the broker to deliver ``size`` bytes in chunks to ``n`` subscribers."""
    topic = f"bench/limit/{uuid.uuid4().hex}"
    count = -(-size // CHUNK)
    done = asyncio.Event()
    finished = 0
    stack: list[aiomqtt.Client] = []

    async def receive(client: aiomqtt.Client) -> None:
        nonlocal finished
        got = 0
        async for _ in client.messages:
            got += 1
            if got == count:
                finished += 1
                if finished == n:
                    done.set()
                return

    for i in range(n):
        client = aiomqtt.Client(host, port, identifier=f"limit-{i}-{uuid.uuid4().hex[:6]}",
                                timeout=60, max_inflight_messages=100)  # fmt: skip
        await client.__aenter__()
        await client.subscribe(topic, qos=1)
        stack.append(client)
    tasks = [asyncio.create_task(receive(c)) for c in stack]
    payload = b"x" * CHUNK
    async with aiomqtt.Client(host, port, identifier="limit-pub", timeout=60) as pub:
        started = time.perf_counter()
        await asyncio.gather(*(pub.publish(topic, payload, qos=1) for _ in range(count)))
        await asyncio.wait_for(done.wait(), 600)
        seconds = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    for client in stack:
        await client.__aexit__(None, None, None)
    return seconds


async def measure(n: int, template: Path, work: Path, broker: MosquittoBroker) -> dict[str, float]:
    topics = Topics(f"edgefleet-bench/{uuid.uuid4().hex[:8]}/v1")
    data_dir = work / f"controller-{n}"
    shutil.copytree(template, data_dir)
    controller = ControllerProcess(data_dir, broker_url=broker.url, topic_root=topics.root)
    controller.start()
    try:
        version = controller.get("/api/models/blob/versions/1")
        artifact_size = version["artifacts"][0]["size"]
        limit = await broker_limit(broker.host, broker.port, n, artifact_size)
        devices = [SimDevice(f"sim-{i:05d}", broker.host, broker.port, topics,
                             data_dir / "keys" / "signing.pub") for i in range(n)]  # fmt: skip
        tasks = [asyncio.create_task(d.run(), name=d.device_id) for d in devices]
        for device in devices:
            await asyncio.wait_for(device.ready.wait(), 120)
        while sum(d["online"] for d in controller.get("/api/devices")) < n:
            await asyncio.sleep(0.2)
        started = time.perf_counter()
        body = {"model": "blob", "version": "1", "selector": "fleet=sim", "waves": "100%",
                "policy": {"soak_s": 0}}  # fmt: skip
        rollout = controller.api("POST", "/api/rollouts", json=body).json()
        while True:
            state = await asyncio.to_thread(controller.get, f"/api/rollouts/{rollout['id']}")
            if state["status"] != "running":
                break
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - started
        assert state["status"] == "completed", state["reason"]
        assert all(d.converged.is_set() for d in devices)
        stages = (
            f"n={n}: last manifest verified at {max(d.manifest_at for d in devices) - started:.2f}"
            " s,"
            f" first at {min(d.manifest_at for d in devices) - started:.2f} s; last artifact "
            f"verified at {max(d.converged_at for d in devices) - started:.2f} s"
        )
        print(stages, file=sys.stderr)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"n": n, "seconds": round(seconds, 3), "limit_seconds": round(limit, 3),
                "ratio": round(seconds / limit, 2)}  # fmt: skip
    finally:
        controller.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-n", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="N <= 100, under a minute")
    parser.add_argument("--keep", action="store_true", help="keep logs and data for a look")
    args = parser.parse_args()
    max_n = min(args.max_n, 100) if args.quick else args.max_n
    sizes = [n for n in (10, 100, 1000, 10000) if n < max_n] + [max_n]
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    broker = MosquittoBroker(work / "mosquitto")
    broker.start()
    try:
        template = work / "template"
        build_template(template)
        results = []
        for n in sizes:
            result = await measure(n, template, work, broker)
            summary = (
                f"n={n}: converged in {result['seconds']} s; broker limit "
                f"{result['limit_seconds']} s; ratio {result['ratio']}"
            )
            print(summary, file=sys.stderr)
            results.append(result)
    finally:
        broker.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"results": results, "ratio_at_max_n": results[-1]["ratio"], "max_n": max_n}))


if __name__ == "__main__":
    asyncio.run(main())
