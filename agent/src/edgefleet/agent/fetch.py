"""Artifact transports: MQTT chunks and HTTP Range, both filling a shared Reassembler.

Both fetch only what the reassembler's on-disk bitmap says is missing, so a download resumes
after a crash, a reconnect or a switch of source. Every chunk is checked against its signed
hash; a source that keeps sending bad bytes is an integrity failure, not a retry. A chunk that
cannot be written (disk full) is a :class:`StorageError`, never mistaken for a network failure.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edgefleet.agent.errors import StorageError
from edgefleet.agent.http_transfer import Failed, Finished, HttpTransfer, Requested
from edgefleet.agent.settings import AgentSettings
from edgefleet.shared.chunks import Reassembler
from edgefleet.shared.errors import (
    DownloadError,
    HashMismatchError,
    LengthMismatchError,
    WireFormatError,
)
from edgefleet.shared.manifest import ArtifactRef
from edgefleet.shared.messages import ChunkRequest
from edgefleet.shared.topics import Topics
from edgefleet.shared.wire import decode_chunk_frame, encode

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish one message."""

    def subscribe(self, topic: str, qos: int = 1, timeout: float | None = None) -> bool:
        """Subscribe (and keep the subscription across reconnects)."""

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription."""


@dataclass
class FetchStats:
    """What one download attempt did, for events and tests."""

    requested: list[int] = field(default_factory=list)
    received: int = 0
    bad_chunks: int = 0


class BadChunkCounter:
    """Counts chunks that failed their signed hash; too many means the source is hostile."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def accept(self, reassembler: Reassembler, index: int, data: bytes) -> bool:
        """Store a chunk; swallow a bad one until the limit, then raise.

        Raises:
            HashMismatchError, LengthMismatchError: the limit of bad chunks was reached.
            StorageError: the chunk or the bitmap could not be written (disk full, I/O).
        """
        try:
            return reassembler.accept(index, data)
        except OSError as e:
            raise StorageError(f"storing chunk {index} in {reassembler.partial}", e) from e
        except (HashMismatchError, LengthMismatchError) as e:
            self.count += 1
            log.warning("bad chunk %d (%s), %d of %d allowed", index, e, self.count, self.limit)
            if self.count >= self.limit:
                raise
            return False


_RECONNECTED = b""


class MqttChunkFetcher:
    """Requests missing chunks on the device's fetch topic; frames arrive via :meth:`feed`."""

    def __init__(self, session: Publisher, topics: Topics, settings: AgentSettings) -> None:
        self.session = session
        self.topics = topics
        self.settings = settings
        self._frames: queue.Queue[bytes] = queue.Queue(maxsize=4096)
        self.last = FetchStats()

    def feed(self, payload: bytes) -> None:
        """Hand over a chunk frame (network thread: never blocks, drops on overflow)."""
        try:
            self._frames.put_nowait(payload)
        except queue.Full:
            log.warning("chunk queue full; a frame was dropped and will be re-requested")

    def notify_reconnected(self) -> None:
        self.feed(_RECONNECTED)

    def _request(self, artifact: ArtifactRef, indices: list[int]) -> None:
        request = ChunkRequest(
            device_id=self.settings.device_id, sha256=artifact.sha256, indices=tuple(indices)
        )
        self.last.requested.extend(indices)
        self.session.publish(self.topics.fetch(self.settings.device_id), encode(request), qos=1)

    def _subscribe(
        self, topic: str, until: float, stop: threading.Event, idle: Callable[[], None]
    ) -> None:
        """Subscribe and wait until ``until`` at most for the SUBACK (so requested frames are
        not missed), in slices of ``idle_every_s`` with ``idle`` between them: a slow or
        absent broker does not hold commands. Without the SUBACK the download goes on; lost
        frames are requested again after ``chunk_timeout_s``."""
        while not stop.is_set():
            asked = time.monotonic()
            slice_s = min(self.settings.idle_every_s, max(0.0, until - asked))
            if self.session.subscribe(topic, 1, timeout=slice_s) or time.monotonic() >= until:
                return
            idle()
            stop.wait(asked + slice_s - time.monotonic())  # offline: subscribe() returned at once

    def fetch(
        self,
        artifact: ArtifactRef,
        reassembler: Reassembler,
        deadline: float,
        stop: threading.Event,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        """Fill ``reassembler`` from MQTT chunk frames, calling ``idle`` every ``idle_every_s``.

        Raises:
            DownloadError: no progress before ``deadline``, or the agent is stopping.
            HashMismatchError: too many chunks failed their signed hash.
            StorageError: a chunk could not be written.
        """
        if artifact.mqtt_topic is None:
            raise DownloadError("the manifest offers no MQTT source")
        self.last = FetchStats()
        bad = BadChunkCounter(self.settings.max_bad_chunks)
        while not self._frames.empty():  # frames of an earlier download
            self._frames.get_nowait()
        try:
            self._subscribe(
                artifact.mqtt_topic,
                min(deadline, time.monotonic() + self.settings.chunk_timeout_s),
                stop,
                idle,
            )
            outstanding: set[int] = set()
            last_progress = last_idle = time.monotonic()
            while not reassembler.is_complete():
                if time.monotonic() - last_idle >= self.settings.idle_every_s:
                    idle()
                    last_idle = time.monotonic()
                if stop.is_set():
                    raise DownloadError("the agent is stopping")
                now = time.monotonic()
                if now > deadline:
                    raise DownloadError(
                        f"MQTT download stalled with {len(reassembler.missing())} chunks missing"
                    )
                if now - last_progress > self.settings.chunk_timeout_s:
                    outstanding.clear()  # lost requests or frames: ask again
                    last_progress = now
                if len(outstanding) <= self.settings.fetch_window_chunks // 2:
                    wanted = [i for i in reassembler.missing() if i not in outstanding]
                    wanted = wanted[: self.settings.fetch_window_chunks - len(outstanding)]
                    if wanted:
                        self._request(artifact, wanted)
                        outstanding.update(wanted)
                wait = last_idle + self.settings.idle_every_s - time.monotonic()
                try:
                    payload = self._frames.get(timeout=min(0.2, max(0.0, wait)))
                except queue.Empty:
                    continue
                if payload == _RECONNECTED:
                    self._subscribe(
                        artifact.mqtt_topic, min(deadline, time.monotonic() + 1.0), stop, idle
                    )
                    last_idle = time.monotonic()
                    outstanding.clear()
                    continue
                try:
                    header, data = decode_chunk_frame(payload)
                except WireFormatError as e:
                    log.warning("dropping a malformed chunk frame: %s", e)
                    continue
                if header.sha256 != artifact.sha256 or header.index >= artifact.chunk_count:
                    continue
                outstanding.discard(header.index)
                if bad.accept(reassembler, header.index, data):
                    self.last.received += 1
                    last_progress = time.monotonic()
            self.last.bad_chunks = bad.count
        finally:
            self.session.unsubscribe(artifact.mqtt_topic)


class HttpRangeFetcher:
    """Fetches missing chunk runs with HTTP Range requests (``bytes=a-b``).

    The transport runs on a worker thread (:class:`HttpTransfer`); this side checks and
    stores chunks, calls ``idle`` every ``idle_every_s`` whatever the source does, and gives
    up at the download's deadline or when no whole chunk came for ``http_timeout_s``, both
    measured in wall-clock time: a source dripping bytes is cut off, not waited for.
    """

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.last = FetchStats()

    def fetch(
        self,
        artifact: ArtifactRef,
        reassembler: Reassembler,
        deadline: float,
        stop: threading.Event,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        """Fill ``reassembler`` over HTTP, calling ``idle`` at least every ``idle_every_s``.

        Nothing is left behind: when this returns or raises, the worker thread has ended
        and its sockets are closed (one still connecting ends within ``http_timeout_s``).

        Raises:
            DownloadError: the server failed or was too slow (no whole chunk for
                ``http_timeout_s``), the deadline passed, or the agent is stopping.
            HashMismatchError: too many chunks failed their signed hash.
            StorageError: a chunk could not be written.
        """
        url = artifact.http_url
        if url is None or not url.startswith(("http://", "https://")):
            raise DownloadError("the manifest offers no HTTP source")
        self.last = FetchStats()
        runs = _runs(reassembler.missing())
        if not runs:
            return
        transfer = HttpTransfer(
            url,
            runs,
            size=artifact.size,
            chunk_size=artifact.chunk_size,
            socket_timeout_s=self.settings.http_timeout_s,
            thread_name=f"edgefleet-agent-fetch-http-{self.settings.device_id}",
        ).start()
        try:
            self._receive(transfer, artifact, reassembler, deadline, stop, idle)
        finally:
            transfer.close()

    def _receive(
        self,
        transfer: HttpTransfer,
        artifact: ArtifactRef,
        reassembler: Reassembler,
        deadline: float,
        stop: threading.Event,
        idle: Callable[[], None],
    ) -> None:
        settings, url = self.settings, transfer.url
        bad = BadChunkCounter(settings.max_bad_chunks)
        last_chunk = next_idle = time.monotonic()  # idle once now, as the download opens
        while True:
            now = time.monotonic()
            if now >= next_idle:
                idle()  # commands, health and newer manifests, whatever the source does
                now = time.monotonic()
                next_idle = now + settings.idle_every_s
            if stop.is_set():
                raise DownloadError("the agent is stopping")
            if now >= deadline:
                raise DownloadError(
                    f"HTTP download from {url} cut off at the download deadline "
                    f"(fetch_timeout_s), {len(reassembler.missing())} of "
                    f"{artifact.chunk_count} chunks missing"
                )
            if now - last_chunk >= settings.http_timeout_s:
                raise DownloadError(
                    f"HTTP source {url} too slow: no whole chunk of {artifact.chunk_size} "
                    f"bytes in {settings.http_timeout_s:g}s (http_timeout_s)"
                )
            item = transfer.next(
                min(next_idle, deadline, last_chunk + settings.http_timeout_s) - now
            )
            if item is None:
                continue
            if isinstance(item, Failed):
                raise item.error
            if isinstance(item, Finished):
                break
            if isinstance(item, Requested):
                self.last.requested.extend(range(item.first, item.last + 1))
                continue
            last_chunk = time.monotonic()
            if bad.accept(reassembler, item.index, item.data):
                self.last.received += 1
        self.last.bad_chunks = bad.count


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of sorted indices."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
