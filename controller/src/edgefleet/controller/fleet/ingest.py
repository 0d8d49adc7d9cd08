"""Ingest of device messages: validate, queue, and write to the database in batches.

Concurrency: ``submit`` is called from the MQTT task and only enqueues. The asyncio task
``fleet-ingest`` drains the queues and writes each batch in one transaction on a worker thread.
State, hello and events are never dropped; telemetry sits in a bounded queue that drops its
oldest entries when ingest falls behind, and counts what it dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet import writer
from edgefleet.shared import (
    ChunkRequest,
    DeviceState,
    Event,
    Hello,
    Telemetry,
    WireFormatError,
    WireModel,
    decode_versioned,
)
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.topics import DeviceChannel, Topics

log = logging.getLogger(__name__)

_MODEL_FOR: dict[DeviceChannel, type[WireModel]] = {
    DeviceChannel.HELLO: Hello,
    DeviceChannel.STATE: DeviceState,
    DeviceChannel.EVENTS: Event,
    DeviceChannel.TELEMETRY: Telemetry,
    DeviceChannel.FETCH: ChunkRequest,
}


@dataclass
class IngestCounters:
    received: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    oversize: int = 0
    spoofed: int = 0
    telemetry_dropped: int = 0
    written: int = 0
    batches: int = 0

    def count(self, kind: str) -> None:
        self.received[kind] = self.received.get(kind, 0) + 1


class FleetIngest:
    """Turns raw MQTT messages into database rows, in batches."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        topics: Topics,
        *,
        on_fetch: Callable[[ChunkRequest], None],
        batch_size: int = 500,
        telemetry_queue: int = 50_000,
        flush_s: float = 0.2,
    ) -> None:
        self.sessions = sessions
        self.topics = topics
        self.on_fetch = on_fetch
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.counters = IngestCounters()
        self._priority: deque[WireModel] = deque()
        self._telemetry: deque[Telemetry] = deque(maxlen=telemetry_queue)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.after_batch: list[Callable[[], None]] = []
        self.wire_versions: dict[str, int] = {}  # one entry per device that said hello

    def submit(self, topic: str, payload: bytes) -> None:
        """Validate one message and queue it; malformed or spoofed ones are logged and dropped."""
        if len(payload) > DEFAULT_LIMITS.max_message_bytes:
            self.counters.oversize += 1
            log.warning("dropped oversize message (%d bytes) on %s", len(payload), topic)
            return
        try:
            parsed = self.topics.parse_device_topic(topic)
            model = _MODEL_FOR.get(parsed.channel)
            if model is None:
                return  # our own desired/commands topics are not ingested
            version, message = decode_versioned(payload, model)
        except (WireFormatError, InvalidTopicError) as e:
            self.counters.malformed += 1
            log.warning("dropped malformed message on %s: %s", topic, str(e)[:300])
            return
        claimed = getattr(message, "device_id", parsed.device_id)
        if claimed != parsed.device_id:
            self.counters.spoofed += 1
            log.warning("dropped message on %s claiming device %s", topic, claimed)
            return
        self.counters.count(parsed.channel.value)
        if isinstance(message, Hello | DeviceState):  # what it speaks, so we write that to it
            self.wire_versions[parsed.device_id] = version
        if isinstance(message, ChunkRequest):
            self.on_fetch(message)
            return
        if isinstance(message, Telemetry):
            if len(self._telemetry) == self._telemetry.maxlen:
                self.counters.telemetry_dropped += 1
            self._telemetry.append(message)
        else:
            self._priority.append(message)
        self._idle.clear()
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        return len(self._priority) + len(self._telemetry)

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far has been written."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    def _take_batch(self) -> list[WireModel]:
        batch: list[WireModel] = []
        while self._priority and len(batch) < self.batch_size:
            batch.append(self._priority.popleft())
        while self._telemetry and len(batch) < self.batch_size:
            batch.append(self._telemetry.popleft())
        return batch

    async def run(self) -> None:
        """Drain the queues forever, one transaction per batch."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self.flush_s if self.backlog < self.batch_size else 0)
            while batch := self._take_batch():
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception:
                    log.exception("writing a batch of %d messages failed; retrying", len(batch))
                    for message in reversed(batch):
                        if not isinstance(message, Telemetry):
                            self._priority.appendleft(message)
                    await asyncio.sleep(1.0)
                    continue
                self.counters.written += len(batch)
                self.counters.batches += 1
                for callback in self.after_batch:
                    callback()
            if not self.backlog:
                self._idle.set()

    def _write(self, batch: list[WireModel]) -> None:
        with self.sessions.begin() as session:
            writer.write_batch(session, batch, versions=self.wire_versions)
