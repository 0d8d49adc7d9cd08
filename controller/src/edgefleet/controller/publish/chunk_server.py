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

A device is served only the artifacts it was issued a manifest for (:class:`IssuedArtifacts`,
answers cached briefly; a request whose answer is not cached waits for one lookup that covers
every device asking about that artifact meanwhile, run on a worker thread by the task
``chunk-issued-<sha>``), and only indices below the artifact's chunk count. Refusals are counted
by reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum

from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.rollouts.tables import RolloutDeviceRow
from edgefleet.shared import ChunkHeader, ChunkRequest, Topics, encode_chunk_frame
from edgefleet.shared.chunks import read_chunk

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
BURST_IDLE_S = 10.0  # requests for an artifact this far apart belong to different bursts
_LOOKUP_BATCH = 500  # devices per query: keeps IN lists short


class RefusalReason(StrEnum):
    """Why a chunk request was not served (the ``reason`` label of the refusal counter)."""

    UNKNOWN_ARTIFACT = "unknown_artifact"
    NOT_ISSUED = "not_issued"
    LOOKUP_BACKLOG = "lookup_backlog"  # too many requests waiting for their lookup
    LOOKUP_FAILED = "lookup_failed"  # the database could not answer; the device asks again


class IssuedArtifacts:
    """Whether a device was issued a manifest for an artifact (or for the golden file a schema-2
    manifest names, or the chunk index of either): a rollout row of that device with that
    sha256 and a signed manifest.
    Answers are cached for ``ttl_s`` (at most ``max_entries`` of them) so a burst of requests
    costs no query each."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        ttl_s: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._answers: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
        self.lookups = 0  # answered from the database

    def cached(self, device_id: str, sha256: str) -> bool | None:
        """The cached answer, or None when there is none fresh."""
        answer = self._answers.get((device_id, sha256))
        if answer is None or self.clock() - answer[1] >= self.ttl_s:
            return None
        return answer[0]

    def look_up(self, sha256: str, device_ids: Iterable[str]) -> set[str]:
        """Which of ``device_ids`` were issued ``sha256`` (reads the database; worker thread).

        Raises:
            SQLAlchemyError: the database could not answer.
        """
        asked = sorted(set(device_ids))
        issued: set[str] = set()
        with self.sessions() as session:
            for start in range(0, len(asked), _LOOKUP_BATCH):
                query = select(RolloutDeviceRow.device_id).where(
                    RolloutDeviceRow.device_id.in_(asked[start : start + _LOOKUP_BATCH]),
                    or_(
                        RolloutDeviceRow.sha256 == sha256,
                        RolloutDeviceRow.golden_sha256 == sha256,
                        RolloutDeviceRow.index_sha256 == sha256,
                        RolloutDeviceRow.golden_index_sha256 == sha256,
                    ),
                    RolloutDeviceRow.signed_manifest.is_not(None),
                )
                issued.update(session.scalars(query.distinct()))
        return issued

    def remember(self, sha256: str, asked: Iterable[str], issued: set[str]) -> None:
        """Cache the answers of a lookup (event loop thread)."""
        self.lookups += 1
        now = self.clock()
        for device_id in asked:
            key = (device_id, sha256)
            self._answers.pop(key, None)
            self._answers[key] = (device_id in issued, now)
        while self._answers:  # oldest first: expired ones, and any beyond the bound, go
            key, (_, at) = next(iter(self._answers.items()))
            if len(self._answers) <= self.max_entries and now - at < self.ttl_s:
                break
            del self._answers[key]


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
        issued: IssuedArtifacts | None = None,
        max_unchecked: int = 10_000,
    ) -> None:
        """``issued`` answers which devices may fetch which artifact; without one (tests of the
        sending alone) every device may fetch every stored artifact."""
        self.store = store
        self.topics = topics
        self.publish = publish
        self.chunk_size = chunk_size
        self.coalesce_s = coalesce_s
        self.gather_s = gather_s
        self.gather_max_s = gather_max_s
        self.issued = issued
        self.max_unchecked = max_unchecked
        self._first_request: dict[str, float] = {}
        self._last_request: dict[str, float] = {}
        self._started: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, int, float]] = asyncio.Queue(max_pending)
        self._queued: set[tuple[str, int]] = set()
        self._sent_at: dict[tuple[str, int], float] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._chunk_counts: dict[str, int] = {}
        # Requests waiting for their lookup: sha256 -> device -> indices, and the lookup tasks.
        self._unchecked: dict[str, dict[str, set[int]]] = {}
        self._unchecked_devices = 0
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self.chunks_sent = 0
        self.requests_refused = 0
        self.refused: dict[str, int] = {}  # by RefusalReason
        self.indices_dropped = 0  # indices at or beyond their artifact's chunk count

    def request(self, request: ChunkRequest) -> None:
        """Serve a device's chunk request, if it may have those chunks (event loop thread)."""
        sha256, device_id = request.sha256, request.device_id
        count = self._chunk_count(sha256)
        if count is None:
            self._refuse(RefusalReason.UNKNOWN_ARTIFACT, device_id, sha256)
            return
        indices = {index for index in request.indices if index < count}
        self.indices_dropped += len(set(request.indices)) - len(indices)
        if not indices:
            return  # nothing it asked for exists: counted above, nothing to send
        verdict = True if self.issued is None else self.issued.cached(device_id, sha256)
        if verdict is None:
            self._defer(device_id, sha256, indices)
        elif verdict:
            self._accept(device_id, sha256, sorted(indices))
        else:  # logged when looked up, not again for every request of a flood
            self._refuse(RefusalReason.NOT_ISSUED, device_id, sha256, logged=False)

    def _refuse(
        self, reason: RefusalReason, device_id: str, sha256: str, *, logged: bool = True
    ) -> None:
        self.requests_refused += 1
        self.refused[reason.value] = self.refused.get(reason.value, 0) + 1
        if logged:
            log.warning("refused chunks of %s to device %s: %s", sha256[:12], device_id, reason)

    def _chunk_count(self, sha256: str) -> int | None:
        """How many chunks the stored artifact has; None when it is not stored."""
        if not self.store.contains(sha256):
            return None
        count = self._chunk_counts.get(sha256)
        if count is None:
            try:
                size = self.store.path_for(sha256).stat().st_size
            except OSError:
                return None
            count = self._chunk_counts[sha256] = max(1, -(-size // self.chunk_size))
        return count

    def _defer(self, device_id: str, sha256: str, indices: set[int]) -> None:
        """Hold a request until a lookup says whether its device was issued the artifact."""
        waiting = self._unchecked.setdefault(sha256, {})
        if device_id in waiting:
            waiting[device_id] |= indices
        elif self._unchecked_devices >= self.max_unchecked:
            self._refuse(RefusalReason.LOOKUP_BACKLOG, device_id, sha256)
            return
        else:
            waiting[device_id] = set(indices)
            self._unchecked_devices += 1
        if sha256 not in self._lookups:
            self._lookups[sha256] = asyncio.get_running_loop().create_task(
                self._look_up(sha256), name=f"chunk-issued-{sha256[:8]}"
            )

    async def _look_up(self, sha256: str) -> None:
        """Answer the requests waiting for ``sha256``, one lookup for all of them; those arriving
        during a lookup wait for the next."""
        issued_artifacts = self.issued
        assert issued_artifacts is not None  # only requests with a check to make are deferred
        try:
            while waiting := self._unchecked.pop(sha256, {}):
                self._unchecked_devices -= len(waiting)
                try:
                    issued = await asyncio.to_thread(
                        issued_artifacts.look_up, sha256, list(waiting)
                    )
                except SQLAlchemyError as e:
                    log.warning("could not look up who was issued %s: %s", sha256[:12], e)
                    for device_id in waiting:
                        self._refuse(RefusalReason.LOOKUP_FAILED, device_id, sha256)
                    continue
                issued_artifacts.remember(sha256, waiting, issued)
                for device_id, indices in waiting.items():
                    if device_id in issued:
                        self._accept(device_id, sha256, sorted(indices))
                    else:
                        self._refuse(RefusalReason.NOT_ISSUED, device_id, sha256)
        finally:
            del self._lookups[sha256]

    def _accept(self, device_id: str, sha256: str, indices: list[int]) -> None:
        now = time.monotonic()
        if now - self._last_request.get(sha256, -1e9) > BURST_IDLE_S:
            # A new burst (a new wave or rollout): gather its requesters again.
            self._first_request[sha256] = now
            self._started.discard(sha256)
        self._last_request[sha256] = now
        for index in indices:
            key = (sha256, index)
            if key in self._queued:
                continue  # a send still to come covers this request too
            sent_at = self._sent_at.get(key)
            # Later sends wait out the coalescing window; a first send is gated in _send.
            not_before = now if sent_at is None else sent_at + self.coalesce_s
            try:
                self._queue.put_nowait((sha256, index, max(not_before, now)))
            except asyncio.QueueFull:
                log.warning("chunk queue full; device %s will ask again", device_id)
                return
            self._queued.add(key)

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                sha256, index, not_before = await self._queue.get()
                await self._slots.acquire()
                task = asyncio.create_task(
                    self._send(sha256, index, not_before), name=f"chunk-{sha256[:8]}-{index}"
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for lookup in list(self._lookups.values()):
                lookup.cancel()

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
