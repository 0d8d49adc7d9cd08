"""Applying device messages to the database: upserts of devices, events and telemetry (each
window's latency histogram stored as sent, next to its p50/p95/p99).

Synchronous; :class:`BatchWrite` gives each batch one transaction, and a batch the database
refuses is halved, each half in a transaction of its own, until what it refuses is one message
alone; a transient failure of the database (locked, connection lost) stops it where it is, to be
resumed. Redelivered messages change nothing (events are keyed by their id; state is idempotent,
and a state older than the one stored, by its ``seq``, is dropped). This module records what
devices report; the rollout engine derives every rollout-device state from it and is the only
writer of those.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Dialect, Executable, Table, bindparam, insert, select, update
from sqlalchemy import exc as db_errors
from sqlalchemy.orm import Session, defer, sessionmaker

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.fleet.tables import (
    DeviceRow,
    EventRow,
    SystemSampleRow,
    TelemetryRow,
)
from edgefleet.shared import (
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    Hello,
    LatencyHistogram,
    OutcomeResult,
    Telemetry,
    WireModel,
)
from edgefleet.shared.histogram import Histogram

# Columns ingest only ever assigns: not loaded (nor JSON-decoded) with the batch's devices.
_WRITE_ONLY_COLUMNS = (
    defer(DeviceRow.last_telemetry),
    defer(DeviceRow.runtimes),
    defer(DeviceRow.accelerators),
    defer(DeviceRow.labels),
    defer(DeviceRow.previous),
)

_LAST_TELEMETRY_EXCLUDES: Any = {"models": {"__all__": {"latency_hist"}}}

# A v1 agent reports no outcome in its state: its failure events stand in for one.
V1_OUTCOME_OF_EVENT = {
    EventType.MANIFEST_REFUSED: OutcomeResult.REFUSED,
    EventType.VERIFY_FAILED: OutcomeResult.REFUSED,
    EventType.LOAD_FAILED: OutcomeResult.REFUSED,
    EventType.DOWNLOAD_FAILED: OutcomeResult.DOWNLOAD_FAILED,
    EventType.VALIDATION_FAILED: OutcomeResult.VALIDATION_FAILED,
    EventType.ERROR: OutcomeResult.IO_ERROR,  # a v1 agent gives up on a local error
}


# PostgreSQL's "program limit exceeded" (an index row too large, say) is an OperationalError
# that the values of a message cause: writing it again fails again.
_POSTGRES_VALUE_LIMITS = "54"


class TransientWriteError(ControllerError):
    """The database could not take a write for now (locked, connection lost, shutting down);
    nothing is wrong with the messages, so they are written again later, unchanged."""

    def __init__(self, error: BaseException, *, pending: int) -> None:
        super().__init__(f"database unavailable ({type(error).__name__}: {str(error)[:300]})")
        self.error = error
        self.pending = pending


def is_transient(error: BaseException) -> bool:
    """Whether a failed write says the database is unavailable rather than that a message
    cannot be stored: a lost connection, a pool timeout, or an ``OperationalError`` (SQLite
    locked or its disk gone; PostgreSQL connection, resources, lock timeout, cancel, deadlock),
    except PostgreSQL's program limits, which the values cause."""
    if isinstance(error, db_errors.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, db_errors.DisconnectionError | db_errors.TimeoutError):
        return True
    if isinstance(error, db_errors.OperationalError):
        sqlstate = getattr(error.orig, "sqlstate", None) or ""
        return not sqlstate.startswith(_POSTGRES_VALUE_LIMITS)
    return False


@dataclass(frozen=True)
class RefusedMessage:
    """A message the database refused when written alone, and why."""

    message: WireModel
    error: Exception


@dataclass
class BatchWrite:
    """One batch on its way into the database.

    :meth:`advance` writes what is pending, a piece per transaction: the whole batch first, and a
    piece the database refuses is split in halves (order kept) until a refused piece is a single
    message, which goes to ``refused``. One bad message among n costs about 2·log2(n) extra
    transactions, and never blocks the others.
    """

    batch: list[WireModel]
    pending: deque[list[WireModel]] = field(default_factory=deque)
    refused: list[RefusedMessage] = field(default_factory=list)
    written: int = 0
    transactions: int = 0

    def __post_init__(self) -> None:
        if self.batch:
            self.pending.append(list(self.batch))

    @property
    def remaining(self) -> int:
        return sum(len(piece) for piece in self.pending)

    def advance(self, sessions: sessionmaker[Session], versions: Mapping[str, int]) -> None:
        """Write every pending piece; what was written or refused stays done.

        Raises:
            TransientWriteError: the database is unavailable; the piece that failed and those
                after it are still pending, to be resumed by calling this again.
        """
        while self.pending:
            piece = self.pending[0]
            self.transactions += 1
            try:
                with sessions.begin() as session:
                    write_batch(session, piece, versions=versions)
            except Exception as e:  # the messages' (isolated below) or the database's (resumed)
                if is_transient(e):
                    raise TransientWriteError(e, pending=self.remaining) from e
                self.pending.popleft()
                if len(piece) == 1:
                    self.refused.append(RefusedMessage(piece[0], e))
                else:
                    middle = len(piece) // 2
                    self.pending.extendleft((piece[middle:], piece[:middle]))
                continue
            self.pending.popleft()
            self.written += len(piece)


def _device(session: Session, cache: dict[str, DeviceRow], device_id: str) -> DeviceRow:
    row = cache.get(device_id) or session.get(DeviceRow, device_id)
    if row is None:
        row = DeviceRow(id=device_id)
        session.add(row)
    cache[device_id] = row
    return row


def write_batch(
    session: Session,
    batch: Iterable[WireModel],
    *,
    versions: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> None:
    """Apply a batch. Telemetry is applied after the batch's hello, state and events (the order
    ``FleetIngest`` takes them in), in bulk: per-row ORM work made ingest ten times slower than
    the broker delivers.

    ``versions`` maps device ids to the wire version of their latest envelopes.
    """
    messages = list(batch)
    now = now or datetime.now(UTC)
    versions = versions or {}
    telemetry = [m for m in messages if isinstance(m, Telemetry)]
    priority = [m for m in messages if not isinstance(m, Telemetry)]
    ids = {getattr(m, "device_id", "") for m in priority}
    devices: dict[str, DeviceRow] = {}
    if ids:
        query = select(DeviceRow).where(DeviceRow.id.in_(ids)).options(*_WRITE_ONLY_COLUMNS)
        devices = {r.id: r for r in session.scalars(query)}
    events = _NewEvents(session, [m for m in priority if isinstance(m, Event)], now)
    for message in priority:
        if isinstance(message, Hello):
            row = _device(session, devices, message.device_id)
            _apply_hello(row, message, now, versions.get(message.device_id))
        elif isinstance(message, DeviceState):
            row = _device(session, devices, message.device_id)
            _apply_state(row, message, now)
            if message.status is not DeviceStatus.OFFLINE and message.device_id in versions:
                row.wire_version = versions[message.device_id]  # (the will is fixed at connect)
        elif isinstance(message, Event):
            row = _device(session, devices, message.device_id)
            if events.add(message) and (row.wire_version or 1) < 2:
                _v1_outcome(row, message)
            if message.type is not EventType.ERROR:
                row.last_seen = now
    events.insert()
    if telemetry:
        _write_telemetry(session, telemetry, now)


def _table(mapped: type[DeviceRow | EventRow | TelemetryRow | SystemSampleRow]) -> Table:
    return cast(Table, mapped.__table__)


class _Bulk:
    """A statement executed for many rows as the driver's own executemany.

    SQLAlchemy Core's executemany builds and walks a dict per row and looks up every column's
    processor for every value: in an ingest worker that was a fifth of its time, more than
    SQLite's inserts. Here the statement is compiled once per dialect, each parameter's bind
    processor (a datetime's text form on SQLite, a histogram's bytes, JSON) is looked up once and
    applied to that parameter only, and rows are tuples in ``params`` order (dicts for a driver
    that takes named parameters, psycopg). A parameter in ``preformatted`` is passed as given,
    already in the form its processor would produce (JSON text from pydantic, say).
    """

    def __init__(
        self, statement: Executable, params: Sequence[str], *, preformatted: Iterable[str] = ()
    ) -> None:
        self.statement = statement
        self.params = tuple(params)
        self.preformatted = frozenset(preformatted)
        self._compiled: dict[str, tuple[str, list[tuple[int, Callable[[Any], Any]]]]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, list[tuple[int, Callable[[Any], Any]]]]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = cast(Any, self.statement).compile(
                dialect=dialect, column_keys=list(self.params)
            )
            if dialect.positional and list(statement.positiontup or ()) != list(self.params):
                raise ValueError(f"give the parameters in the order {statement.positiontup}")
            processors = []
            for index, name in enumerate(self.params):
                bind_type = statement.binds[name].type.dialect_impl(dialect)
                processor = bind_type.bind_processor(dialect)
                if processor is not None and name not in self.preformatted:
                    processors.append((index, processor))
            compiled = self._compiled[dialect.name] = (str(statement), processors)
        return compiled

    def execute(self, connection: Connection, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        sql, processors = self._for(connection.dialect)
        if processors:
            converted = []
            for row in rows:
                values = list(row)
                for index, processor in processors:
                    values[index] = processor(values[index])
                converted.append(tuple(values))
            rows = converted
        if connection.dialect.positional:
            connection.exec_driver_sql(sql, rows)
        else:
            connection.exec_driver_sql(sql, [dict(zip(self.params, r, strict=True)) for r in rows])


_TELEMETRY_COLUMNS = (
    "device_id", "window_start", "window_end", "model_id", "version", "requests", "errors",
    "client_errors", "p50_ms", "p95_ms", "p99_ms", "max_ms", "throughput_rps", "latency_hist",
)  # fmt: skip
_SYSTEM_COLUMNS = (
    "device_id", "window_end", "cpu_percent", "process_cpu_percent", "rss_bytes",
    "mem_used_bytes", "mem_total_bytes", "temperature_c", "disk_free_bytes",
)  # fmt: skip
_TELEMETRY_INSERT = _Bulk(insert(_table(TelemetryRow)), _TELEMETRY_COLUMNS)
_SYSTEM_INSERT = _Bulk(insert(_table(SystemSampleRow)), _SYSTEM_COLUMNS)
_EVENT_INSERT = _Bulk(
    insert(_table(EventRow)),
    (
        "event_id", "device_id", "type", "at", "model_id", "version", "serial", "reason",
        "figures", "received_at",
    ),
)  # fmt: skip
_DEVICES = _table(DeviceRow)
_LAST_SEEN_UPDATE = _Bulk(
    update(_DEVICES)
    .where(_DEVICES.c.id == bindparam("device"))
    .values(last_seen=bindparam("last_seen"), last_telemetry=bindparam("last_telemetry")),
    ("last_telemetry", "last_seen", "device"),  # the order the statement compiles to
    preformatted=("last_telemetry",),
)


def _write_telemetry(session: Session, batch: list[Telemetry], now: datetime) -> None:
    """Insert the points and samples in bulk, then update each device's last-seen once."""
    session.flush()  # the ORM changes of the batch's other messages go first
    latest = {t.device_id: t for t in batch}
    known = set(session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(latest))))
    for device_id in latest.keys() - known:  # telemetry before any hello
        session.add(DeviceRow(id=device_id))
    session.flush()
    points: list[tuple[Any, ...]] = []
    samples: list[tuple[Any, ...]] = []
    for telemetry in batch:
        _telemetry_rows(telemetry, points, samples)
    connection = session.connection()
    _TELEMETRY_INSERT.execute(connection, points)
    _SYSTEM_INSERT.execute(connection, samples)
    # Telemetry says when a device was last heard of, never that it is online: ingest writes a
    # batch's states before its telemetry, so a window sent just before the device's last will
    # can land after it. Only a hello or a state brings a device (back) online.
    # The device's last window as a summary: its histogram is in its telemetry row, and would
    # make every device row (and ``/api/devices``) carry up to a thousand buckets per model.
    _LAST_SEEN_UPDATE.execute(
        connection,
        [
            (t.model_dump_json(exclude=_LAST_TELEMETRY_EXCLUDES), now, device_id)
            for device_id, t in latest.items()
        ],
    )


def _apply_hello(row: DeviceRow, hello: Hello, now: datetime, version: int | None) -> None:
    row.arch = hello.hardware.arch
    row.cpu_count = hello.hardware.cpu_count
    row.ram_bytes = hello.hardware.ram_bytes
    row.os = hello.hardware.os
    row.agent_version = hello.agent_version
    row.runtimes = [r.model_dump() for r in hello.runtimes]
    row.accelerators = list(hello.accelerators)
    row.labels = dict(hello.labels)
    if version is not None:
        row.wire_version = version
    _set_online(row, True, now)
    row.last_seen = now


def _set_online(row: DeviceRow, online: bool, now: datetime) -> None:
    """Flip the online flag, remembering since when the device is on or off line."""
    if online and not row.online:
        row.online_since = now
    elif not online and (row.online or row.offline_since is None):
        row.offline_since = now
    row.online = online


def _apply_state(row: DeviceRow, state: DeviceState, now: datetime) -> None:
    offline = state.status is DeviceStatus.OFFLINE
    if state.seq is not None:
        if not offline and row.state_seq is not None and state.seq <= row.state_seq:
            return  # delivered after a newer state of the same device: stale
        if not offline:
            row.state_seq = state.seq
    row.status = state.status.value
    _set_online(row, not offline, now)
    row.detail = state.detail
    if offline:
        return  # the last will carries no slots: keep what we knew
    row.active = state.active.model_dump(mode="json") if state.active else None
    row.previous = state.previous.model_dump(mode="json") if state.previous else None
    row.reported_last_serial = max(row.reported_last_serial or 0, state.last_serial)
    if state.last_outcome is not None:
        row.last_outcome = state.last_outcome.model_dump(mode="json")
    if state.seq is not None:  # a v2 state says what is in progress, including nothing
        row.progress = state.progress.model_dump(mode="json") if state.progress else None
        row.desired_error = (
            state.desired_error.model_dump(mode="json") if state.desired_error else None
        )
    row.last_seen = now


class _NewEvents:
    """The events of a batch that are not stored yet, inserted together: one query finds the
    batch's redeliveries (an event is keyed by its id), one executemany inserts the rest. An
    ORM object, a query and a flush per event made the few events of a busy fleet cost the
    controller's main process as much CPU as its many telemetry windows."""

    def __init__(self, session: Session, events: list[Event], now: datetime) -> None:
        self.session = session
        self.now = now
        self.rows: list[tuple[Any, ...]] = []
        ids = {str(e.event_id) for e in events}
        self.seen: set[str] = set()
        if ids:
            query = select(EventRow.event_id).where(EventRow.event_id.in_(ids))
            self.seen = set(session.scalars(query))

    def add(self, event: Event) -> bool:
        """Queue an event for insertion; False when it was a redelivery."""
        event_id = str(event.event_id)
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        self.rows.append(
            (
                event_id, event.device_id, event.type.value, event.at, event.model_id,
                event.version, event.serial, event.reason, dict(event.figures), self.now,
            )
        )  # fmt: skip
        return True

    def insert(self) -> None:
        if self.rows:
            _EVENT_INSERT.execute(self.session.connection(), self.rows)
            self.rows = []


def _v1_outcome(row: DeviceRow, event: Event) -> None:
    """A v1 agent's failure event about a serial, recorded as the outcome it stands for."""
    result = V1_OUTCOME_OF_EVENT.get(event.type)
    if result is None or event.serial is None or event.serial < 1:
        return
    current = row.last_outcome or {}
    if int(current.get("serial") or 0) > event.serial:
        return  # never let an older serial's failure replace a newer outcome
    row.last_outcome = {
        "serial": event.serial,
        "sha256": None,
        "result": result.value,
        "reason": (event.reason or "no reason given")
        if event.type.value == result.value
        else f"{event.type.value}: {event.reason or 'no reason given'}",
        "at": event.at.isoformat(),
    }


def _summary_of(
    hist: LatencyHistogram | None,
) -> tuple[float | None, float | None, float | None, float | None]:
    """p50, p95, p99 and max of a window that sent its histogram without a summary."""
    if hist is None or hist.count == 0:
        return None, None, None, None
    histogram = Histogram.of(hist)
    p50, p95, p99 = (histogram.percentile(q) for q in (0.50, 0.95, 0.99))
    return p50, p95, p99, hist.max if hist.max is not None else p99


def _telemetry_rows(
    telemetry: Telemetry, points: list[tuple[Any, ...]], samples: list[tuple[Any, ...]]
) -> None:
    """The window's telemetry rows (one per model) and its system sample, in the columns of
    ``_TELEMETRY_INSERT`` and ``_SYSTEM_INSERT``."""
    for stats in telemetry.models:
        latency = stats.latency_ms
        hist = stats.latency_hist
        p50, p95, p99, top = (
            (latency.p50, latency.p95, latency.p99, latency.max)
            if latency is not None
            else _summary_of(hist)
        )
        points.append(
            (
                telemetry.device_id, telemetry.window_start, telemetry.window_end,
                stats.model_id, stats.version, stats.requests, stats.errors,
                stats.client_errors, p50, p95, p99, top, stats.throughput_rps,
                hist if hist is not None and hist.count else None,
            )
        )  # fmt: skip
    system = telemetry.system
    samples.append(
        (
            telemetry.device_id, telemetry.window_end, system.cpu_percent,
            system.process_cpu_percent, system.rss_bytes, system.mem_used_bytes,
            system.mem_total_bytes, system.temperature_c, system.disk_free_bytes,
        )
    )  # fmt: skip
