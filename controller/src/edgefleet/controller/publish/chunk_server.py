"""Serving artifact chunks over MQTT in answer to devices' chunk requests.

Concurrency: ``request`` is called from the MQTT task and only enqueues; the asyncio task
``chunk-server`` reads chunks on a worker thread and publishes them. Every device downloading an
artifact subscribes to the same topic, so one publish serves all of them: a request for a chunk
that is already queued adds nothing, and a request for a chunk sent within the coalescing window
is deferred to the window's end (not dropped), so a device that subscribed just after a send still
gets the chunk promptly while a fleet fetching one artifact costs the broker a few copies of it,
not one per device. The first send of an artifact's chunks waits until requests have been quiet
for ``gather_s`` (at most ``gather_max_s``), so a wave that received its manifests together is
subscribed before the bytes go out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.shared import ChunkHeader, ChunkRequest, Topics, encode_chunk_frame
from edgefleet.shared.chunks import read_chunk

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
BURST_IDLE_S = 10.0  # requests for an artifact this far apart belong to different bursts


class ChunkServer:
    def __init__(
        self,
        store: ArtifactStore,
        topics: Topics,
        publish: Publish,
        *,
        chunk_size: int,
        coalesce_s: float = 0.5,
        gather_s: float = 0.2,
        gather_max_s: float = 3.0,
        concurrency: int = 32,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.topics = topics
        self.publish = publish
        self.chunk_size = chunk_size
        self.coalesce_s = coalesce_s
        self.gather_s = gather_s
        self.gather_max_s = gather_max_s
        self._first_request: dict[str, float] = {}
        self._last_request: dict[str, float] = {}
        self._started: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, int, float]] = asyncio.Queue(max_pending)
        self._queued: set[tuple[str, int]] = set()
        self._sent_at: dict[tuple[str, int], float] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self.chunks_sent = 0
        self.requests_refused = 0

    def request(self, request: ChunkRequest) -> None:
        if not self.store.contains(request.sha256):
            self.requests_refused += 1
            log.warning(
                "device %s asked for unknown artifact %s", request.device_id, request.sha256[:12]
            )
            return
        now = time.monotonic()
        if now - self._last_request.get(request.sha256, -1e9) > BURST_IDLE_S:
            # A new burst (a new wave or rollout): gather its requesters again.
            self._first_request[request.sha256] = now
            self._started.discard(request.sha256)
        self._last_request[request.sha256] = now
        for index in request.indices:
            key = (request.sha256, index)
            if key in self._queued:
                continue  # a send still to come covers this request too
            sent_at = self._sent_at.get(key)
            # Later sends wait out the coalescing window; a first send is gated in _send.
            not_before = now if sent_at is None else sent_at + self.coalesce_s
            try:
                self._queue.put_nowait((request.sha256, index, max(not_before, now)))
            except asyncio.QueueFull:
                log.warning("chunk queue full; device %s will ask again", request.device_id)
                return
            self._queued.add(key)

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while True:
            sha256, index, not_before = await self._queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(
                self._send(sha256, index, not_before), name=f"chunk-{sha256[:8]}-{index}"
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _gather(self, sha256: str) -> None:
        """Hold an artifact's first send until its requests go quiet (bounded wait)."""
        while sha256 not in self._started:
            now = time.monotonic()
            quiet_for = now - self._last_request.get(sha256, now)
            waited = now - self._first_request.get(sha256, now)
            if quiet_for >= self.gather_s or waited >= self.gather_max_s:
                self._started.add(sha256)
                return
            await asyncio.sleep(min(self.gather_s - quiet_for, self.gather_max_s - waited, 0.05))

    async def _send(self, sha256: str, index: int, not_before: float) -> None:
        key = (sha256, index)
        try:
            delay = not_before - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._gather(sha256)
            path = self.store.path_for(sha256)
            chunk = await asyncio.to_thread(read_chunk, path, index, self.chunk_size)
            count = -(-path.stat().st_size // self.chunk_size)
            header = ChunkHeader(sha256=sha256, index=index, count=count, chunk_sha256=chunk.sha256)
            # Marked before the publish: a request arriving now is one for the next send.
            self._queued.discard(key)
            self._sent_at[key] = time.monotonic()
            await self.publish(
                self.topics.artifact_chunks(sha256), encode_chunk_frame(header, chunk.data)
            )
            self.chunks_sent += 1
        except IndexError:
            log.warning("artifact %s has no chunk %d", sha256[:12], index)
        except (OSError, ControllerError) as e:  # the device re-requests what it did not get
            log.warning("sending chunk %d of %s failed: %s", index, sha256[:12], e)
        finally:
            self._queued.discard(key)
            self._slots.release()
