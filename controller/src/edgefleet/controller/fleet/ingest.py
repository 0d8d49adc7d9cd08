"""Ingest of device messages: validate, rate-limit, queue, and write to the database in batches.

Concurrency: ``submit`` is called from the MQTT task and only enqueues. The asyncio task
``fleet-ingest`` drains the queues and writes each batch on a worker thread, one transaction per
batch. Timestamps more than ``clock_skew`` ahead of the controller's clock are set to its "now"
and counted by field (``edgefleet.shared.clock``). Every device has a rate for each kind of
message, so what one device sends costs bounded memory and work: its telemetry, events and chunk
requests beyond their rates are dropped; its hellos and states beyond theirs wait, one per device
and kind, the newest replacing the one waiting, so the newest is always written. Telemetry also
sits in a bounded queue that drops its oldest entries when ingest falls behind. Every drop is
counted by reason.

A batch the database refuses is written in halves until each refused message is alone; that
message is dead-lettered (``fleet.deadletters``) and the rest lands, so one device's message that
cannot be stored never holds up another's. A database that is unavailable (locked, connection
lost) refuses nothing: the batch is written again, from where it stopped, after a capped, jittered
backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet import deadletters, writer
from edgefleet.controller.fleet.deadletters import DeadLetter
from edgefleet.controller.fleet.writer import BatchWrite, TransientWriteError
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
from edgefleet.shared.bounds import DEFAULT_CLOCK_SKEW
from edgefleet.shared.clock import clamp_future
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.topics import DeviceChannel, Topics

log = logging.getLogger(__name__)

T = TypeVar("T")

_MODEL_FOR: dict[DeviceChannel, type[WireModel]] = {
    DeviceChannel.HELLO: Hello,
    DeviceChannel.STATE: DeviceState,
    DeviceChannel.EVENTS: Event,
    DeviceChannel.TELEMETRY: Telemetry,
    DeviceChannel.FETCH: ChunkRequest,
}


_CHANNEL_OF: dict[type[WireModel], DeviceChannel] = {m: c for c, m in _MODEL_FOR.items()}


class DropReason(StrEnum):
    """Why a device message was not written (the ``reason`` label of the drop counter)."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    SPOOFED = "spoofed"
    TELEMETRY_QUEUE_FULL = "telemetry_queue_full"
    TELEMETRY_RATE_LIMITED = "telemetry_rate_limited"
    CHUNK_REQUEST_RATE_LIMITED = "chunk_request_rate_limited"
    EVENTS_RATE_LIMITED = "events_rate_limited"
    # A hello or state over the device's rate replaced by a newer one before it was written
    # (the newest is always written: at most one per device and kind waits).
    SUPERSEDED = "superseded"


@dataclass
class IngestCounters:
    received: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    oversize: int = 0
    spoofed: int = 0
    telemetry_dropped: int = 0  # queue full or over the device's rate
    written: int = 0
    batches: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # by DropReason
    dead_lettered: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, error type)
    clamped: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, field): future
    write_retries: int = 0  # batches written again after the database was unavailable
    transactions: int = 0  # write transactions, including those isolating refused messages

    def count(self, kind: str) -> None:
        self.received[kind] = self.received.get(kind, 0) + 1

    def drop(self, reason: DropReason) -> None:
        self.dropped[reason.value] = self.dropped.get(reason.value, 0) + 1
        if reason is DropReason.OVERSIZE:
            self.oversize += 1
        elif reason is DropReason.MALFORMED:
            self.malformed += 1
        elif reason is DropReason.SPOOFED:
            self.spoofed += 1
        elif reason in {DropReason.TELEMETRY_QUEUE_FULL, DropReason.TELEMETRY_RATE_LIMITED}:
            self.telemetry_dropped += 1

    def clamp(self, kind: str, fields: list[str]) -> None:
        for name in fields:
            key = (kind, name)
            self.clamped[key] = self.clamped.get(key, 0) + 1

    def dead_letter(self, kind: str, error_type: str) -> None:
        key = (kind, error_type)
        self.dead_lettered[key] = self.dead_lettered.get(key, 0) + 1

    def copy(self) -> IngestCounters:
        copied = IngestCounters()
        for f in fields(IngestCounters):
            value = getattr(self, f.name)
            setattr(copied, f.name, dict(value) if isinstance(value, dict) else value)
        return copied

    def since(self, before: IngestCounters) -> IngestCounters:
        """What was counted after ``before`` (an earlier :meth:`copy` of these counters)."""
        delta = IngestCounters()
        for f in fields(IngestCounters):
            now, then = getattr(self, f.name), getattr(before, f.name)
            if isinstance(now, dict):
                setattr(delta, f.name, {k: v - then.get(k, 0) for k, v in now.items()
                                        if v != then.get(k, 0)})  # fmt: skip
            else:
                setattr(delta, f.name, now - then)
        return delta

    def add(self, other: IngestCounters) -> None:
        """Count what ``other`` counted too (an ingest worker process's :meth:`since`)."""
        for f in fields(IngestCounters):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            else:
                setattr(self, f.name, mine + theirs)

    def counted(self) -> bool:
        """Whether anything at all was counted."""
        return any(getattr(self, f.name) for f in fields(IngestCounters))


class DeviceRateLimiter:
    """A token bucket per device: ``rate`` messages per second on average, ``burst`` at once.

    Memory is bounded: buckets are kept least recently used first; one idle long enough to have
    refilled is forgotten (a fresh bucket is the same), and beyond ``max_devices`` the least
    recently used goes.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_devices: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_devices = max_devices
        self.clock = clock
        self._refill_s = self.burst / rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, device_id: str) -> bool:
        """Take a token of ``device_id``'s bucket; False when it has none left."""
        now = self.clock()
        tokens, at = self._buckets.pop(device_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[device_id] = (tokens - 1.0 if allowed else tokens, now)
        while self._buckets:
            oldest, (_, used_at) = next(iter(self._buckets.items()))
            if len(self._buckets) <= self.max_devices and now - used_at < self._refill_s:
                break
            del self._buckets[oldest]
        return allowed


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
        telemetry_rate: float = 5.0,
        telemetry_burst: int = 20,
        chunk_request_rate: float = 20.0,
        chunk_request_burst: int = 100,
        event_rate: float = 20.0,
        event_burst: int = 200,
        status_rate: float = 5.0,
        status_burst: int = 50,
        rate_limited_devices: int = 100_000,
        dead_letters_keep: int = 10_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        write_inline: bool = False,
    ) -> None:
        self.sessions = sessions
        # Write on the loop's thread: for a process that does nothing but ingest. A writer
        # thread gives up the interpreter lock at each row the driver steps, and waits up to a
        # switch interval (5 ms) to get it back from a busy receiving thread: 500 rows took
        # seconds (``edgefleet.controller.fleet.ingest_workers``).
        self.write_inline = write_inline
        self.clock_skew = clock_skew
        self.held_check_s = 0.5
        self.topics = topics
        self.on_fetch = on_fetch
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.dead_letters_keep = dead_letters_keep
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.counters = IngestCounters()
        self.telemetry_limit = DeviceRateLimiter(
            telemetry_rate, telemetry_burst, max_devices=rate_limited_devices
        )
        self.chunk_request_limit = DeviceRateLimiter(
            chunk_request_rate, chunk_request_burst, max_devices=rate_limited_devices
        )
        self.event_limit = DeviceRateLimiter(
            event_rate, event_burst, max_devices=rate_limited_devices
        )
        # hello and state together: over the rate, the newest waits (one per device and kind)
        self.status_limit = DeviceRateLimiter(
            status_rate, status_burst, max_devices=rate_limited_devices
        )
        self._held: OrderedDict[tuple[str, str], Hello | DeviceState] = OrderedDict()
        self._priority: deque[WireModel] = deque()
        self._telemetry: deque[Telemetry] = deque(maxlen=telemetry_queue)
        self._writing = 0  # messages of the batch being written, retries included
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.after_batch: list[Callable[[], None]] = []
        # Called with each batch's messages once stored (not those dead-lettered), on a worker
        # thread: the /metrics totals (``edgefleet.controller.telemetry_totals``).
        self.after_write: list[Callable[[list[WireModel]], None]] = []
        self.wire_versions: dict[str, int] = {}  # one entry per device that said hello
        self.remote_backlog: dict[int, int] = {}  # by ingest worker process

    def submit(self, topic: str, payload: bytes) -> None:
        """Validate one message and queue it; malformed, spoofed or over-rate ones are logged
        (over-rate ones only counted) and dropped."""
        if len(payload) > DEFAULT_LIMITS.max_message_bytes:
            self.counters.drop(DropReason.OVERSIZE)
            log.warning("dropped oversize message (%d bytes) on %s", len(payload), topic[:300])
            return
        try:
            parsed = self.topics.parse_device_topic(topic)
            model = _MODEL_FOR.get(parsed.channel)
            if model is None:
                return  # our own desired/commands topics are not ingested
            version, message = decode_versioned(payload, model)
        except (WireFormatError, InvalidTopicError) as e:
            self.counters.drop(DropReason.MALFORMED)
            log.warning("dropped malformed message on %s: %s", topic[:300], str(e)[:300])
            return
        claimed = getattr(message, "device_id", parsed.device_id)
        if claimed != parsed.device_id:
            self.counters.drop(DropReason.SPOOFED)
            log.warning("dropped message on %s claiming device %s", topic, claimed)
            return
        self.counters.count(parsed.channel.value)
        message, clamped = clamp_future(message, datetime.now(UTC), self.clock_skew)
        if clamped:  # a fast clock: dated "now", counted, not dropped (the rest is real)
            self.counters.clamp(parsed.channel.value, clamped)
            log.debug("clamped future %s of %s from %s", clamped, parsed.channel, claimed)
        if isinstance(message, Hello | DeviceState):  # what it speaks, so we write that to it
            self.wire_versions[parsed.device_id] = version
        if isinstance(message, ChunkRequest):
            if not self.chunk_request_limit.allow(parsed.device_id):
                self.counters.drop(DropReason.CHUNK_REQUEST_RATE_LIMITED)
                return
            self.on_fetch(message)
            return
        if isinstance(message, Telemetry):
            if not self.telemetry_limit.allow(parsed.device_id):
                self.counters.drop(DropReason.TELEMETRY_RATE_LIMITED)
                return
            if len(self._telemetry) == self._telemetry.maxlen:
                self.counters.drop(DropReason.TELEMETRY_QUEUE_FULL)
            self._telemetry.append(message)
        elif isinstance(message, Event):
            if not self.event_limit.allow(parsed.device_id):
                self.counters.drop(DropReason.EVENTS_RATE_LIMITED)
                return
            self._priority.append(message)
        elif isinstance(message, Hello | DeviceState):
            key = (parsed.device_id, parsed.channel.value)
            if key in self._held or not self.status_limit.allow(parsed.device_id):
                if self._held.pop(key, None) is not None:
                    self.counters.drop(DropReason.SUPERSEDED)
                self._held[key] = message  # written once the device's rate allows
            else:
                self._priority.append(message)
        self._idle.clear()
        self._wakeup.set()

    def _release_held(self) -> None:
        """Queue the held hellos and states whose device's rate allows one again."""
        for key in list(self._held):
            if self.status_limit.allow(key[0]):
                self._priority.append(self._held.pop(key))

    @property
    def backlog(self) -> int:
        return len(self._priority) + len(self._telemetry) + len(self._held) + self._writing

    @property
    def total_backlog(self) -> int:
        """This process's backlog and what the ingest worker processes last reported of
        theirs (``edgefleet.controller.fleet.ingest_workers``)."""
        return self.backlog + sum(self.remote_backlog.values())

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far has been written (or dead-lettered)."""
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
            if self._held:  # held hellos and states go out as their devices' rates refill
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.held_check_s)
            else:
                await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self.flush_s if self.backlog < self.batch_size else 0)
            self._release_held()
            # Full batches, and whatever else is due: a part batch of telemetry that came in
            # while the first batch waited goes back to waiting for more (up to one more
            # flush), since a transaction's cost is mostly per batch and per device in it.
            first = True
            while first or self._priority or len(self._telemetry) >= self.batch_size:
                first = False
                batch = self._take_batch()
                if not batch:
                    break
                await self._store(batch)
                for callback in self.after_batch:
                    callback()
            if self._telemetry:
                self._wakeup.set()
            if not self.backlog:
                self._idle.set()

    async def _store(self, batch: list[WireModel]) -> None:
        """Write ``batch`` until every message is stored or dead-lettered, waiting out (with
        capped, jittered backoff) a database that is unavailable."""
        write = BatchWrite(batch)
        attempt = 0
        self._writing = len(batch)
        try:
            while True:
                transactions = write.transactions
                try:
                    await self._off_loop(self._advance, write)
                    break
                except TransientWriteError as e:
                    self.counters.write_retries += 1
                    delay = min(self.retry_max_s, self.retry_initial_s * 2 ** min(attempt, 30))
                    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                    attempt += 1
                    log.warning(
                        "%s; writing %d messages again in %.1f s (attempt %d)",
                        e, e.pending, delay, attempt,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                finally:
                    self.counters.transactions += write.transactions - transactions
        finally:
            self._writing = 0
        self.counters.written += write.written
        self.counters.batches += 1
        for refused in write.refused:
            kind = _CHANNEL_OF[type(refused.message)].value
            self.counters.dead_letter(kind, type(refused.error).__name__)
        if self.after_write:
            refused_ids = {id(r.message) for r in write.refused}
            stored = [m for m in batch if id(m) not in refused_ids]
            await self._off_loop(self._after_write, stored)

    async def _off_loop(self, work: Callable[[T], None], arg: T) -> None:
        """Run blocking database work on a worker thread, or, with ``write_inline``, on the
        loop's own thread."""
        if self.write_inline:
            work(arg)
        else:
            await asyncio.to_thread(work, arg)

    def _after_write(self, stored: list[WireModel]) -> None:
        for callback in self.after_write:
            try:
                callback(stored)
            except Exception:  # an observer's failure never stops ingest
                log.exception("after-write %r failed on %d messages", callback, len(stored))

    def _advance(self, write: BatchWrite) -> None:
        """Write what is pending, then dead-letter what was refused (worker thread).

        Raises:
            TransientWriteError: the database is unavailable; call again to resume.
        """
        write.advance(self.sessions, self.wire_versions)
        if not write.refused:
            return
        now = datetime.now(UTC)
        letters = [self._dead_letter(r, now) for r in write.refused]
        first = letters[0]  # one line per batch, however many a device sends
        log.error(
            "dead-lettered %d message(s) the database refused, the first a %s of device %s: "
            "%s: %s",
            len(letters), first.kind, first.device_id, first.error_type, first.error[:300],
        )  # fmt: skip
        try:
            with self.sessions.begin() as session:
                deadletters.record(session, letters, keep=self.dead_letters_keep)
        except Exception as e:
            if writer.is_transient(e):
                raise TransientWriteError(e, pending=len(letters)) from e
            log.exception("could not store %d dead letters; counted only", len(letters))

    def _dead_letter(self, refused: writer.RefusedMessage, now: datetime) -> DeadLetter:
        message = refused.message
        channel = _CHANNEL_OF[type(message)]
        device_id = str(getattr(message, "device_id", ""))
        return DeadLetter.of(
            message,
            refused.error,
            device_id=device_id,
            kind=channel.value,
            topic=self.topics.device(device_id, channel),
            received_at=now,
        )
