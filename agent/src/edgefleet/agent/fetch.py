"""Artifact transports: MQTT chunks and HTTP Range, both filling a shared Reassembler.

Both fetch only what the reassembler's on-disk bitmap says is missing, so a download resumes
after a crash, a reconnect or a switch of source. Every chunk is checked against its signed
hash; a source that keeps sending bad bytes is an integrity failure, not a retry. A chunk that
cannot be written (disk full) is a :class:`StorageError`, never mistaken for a network failure.
"""

from __future__ import annotations

import http.client
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edgefleet.agent.errors import StorageError
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

    def fetch(
        self,
        artifact: ArtifactRef,
        reassembler: Reassembler,
        deadline: float,
        stop: threading.Event,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        """Fill ``reassembler`` from MQTT chunk frames.

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
        self.session.subscribe(artifact.mqtt_topic, 1, timeout=self.settings.chunk_timeout_s)
        try:
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
                try:
                    payload = self._frames.get(timeout=0.2)
                except queue.Empty:
                    continue
                if payload == _RECONNECTED:
                    self.session.subscribe(artifact.mqtt_topic, 1, timeout=1.0)
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
    """Fetches missing chunk runs with HTTP Range requests (``bytes=a-b``)."""

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
        """Fill ``reassembler`` over HTTP, calling ``idle`` between requests and while reading.

        Raises:
            DownloadError: the server failed, timed out or the agent is stopping.
            HashMismatchError: too many chunks failed their signed hash.
            StorageError: a chunk could not be written.
        """
        url = artifact.http_url
        if url is None or not url.startswith(("http://", "https://")):
            raise DownloadError("the manifest offers no HTTP source")
        self.last = FetchStats()
        bad = BadChunkCounter(self.settings.max_bad_chunks)
        last_idle = time.monotonic()
        for first, last in _runs(reassembler.missing()):
            idle()
            last_idle = time.monotonic()
            if stop.is_set() or time.monotonic() > deadline:
                raise DownloadError("HTTP download stopped before it completed")
            start = first * artifact.chunk_size
            end = min(artifact.size, (last + 1) * artifact.chunk_size) - 1
            request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end}"})  # noqa: S310 - scheme checked above
            self.last.requested.extend(range(first, last + 1))
            try:
                resp = urllib.request.urlopen(request, timeout=self.settings.http_timeout_s)  # noqa: S310
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                raise DownloadError(f"HTTP download from {url} failed: {e}") from e
            with resp:
                if resp.status == 200:  # the server ignored Range: skip to our offset
                    _read_exact(resp, start, url)
                elif resp.status != 206:
                    raise DownloadError(f"HTTP {resp.status} for {url}")
                for index in range(first, last + 1):
                    length = min(artifact.chunk_size, artifact.size - index * artifact.chunk_size)
                    if bad.accept(reassembler, index, _read_exact(resp, length, url)):
                        self.last.received += 1
                    if time.monotonic() - last_idle >= self.settings.idle_every_s:
                        idle()  # a long response must not hold commands or a newer manifest
                        last_idle = time.monotonic()
                        if stop.is_set() or time.monotonic() > deadline:
                            raise DownloadError("HTTP download stopped before it completed")
        self.last.bad_chunks = bad.count


def _read_exact(resp: object, length: int, url: str) -> bytes:
    """Read exactly ``length`` body bytes.

    Raises:
        DownloadError: the connection failed or the body ended early.
    """
    read = getattr(resp, "read")  # noqa: B009 - http.client.HTTPResponse, typed loosely
    try:
        data: bytes = read(length)
    except (http.client.HTTPException, OSError) as e:  # includes socket timeouts
        raise DownloadError(f"HTTP download from {url} failed: {e}") from e
    if len(data) != length:
        raise DownloadError(f"HTTP body ended after {len(data)} of {length} bytes")
    return data


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of sorted indices."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
