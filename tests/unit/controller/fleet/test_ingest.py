"""The ingest on a real database (SQLite and PostgreSQL): a message the database refuses is
dead-lettered alone while every other device's messages land; a database that is only locked
refuses nothing and gets the batch once the lock goes; a device flooding telemetry loses only its
own excess."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from ingest_harness import refuse_devices, run_ingest, until
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.ingest import DeviceRateLimiter, FleetIngest
from edgefleet.controller.fleet.tables import DeadLetterRow, DeviceRow, EventRow, TelemetryRow
from edgefleet.shared import Event, EventType, Telemetry, Topics, WireModel, encode
from support.samples import device_hello, device_state, device_telemetry, slot

TOPICS = Topics("edgefleet-test/ingest/v1")
KINDS = ("events", "hello", "state", "telemetry")


def event_of(device_id: str) -> Event:
    return Event(device_id=device_id, type=EventType.COMMAND_DONE, at=datetime.now(UTC))


def messages_of(device_id: str) -> list[tuple[str, bytes]]:
    """What an agent sends on connect: hello, state, an event and a telemetry window."""
    messages: list[tuple[str, WireModel]] = [
        (TOPICS.hello(device_id), device_hello(device_id)),
        (TOPICS.state(device_id), device_state(device_id, active=slot())),
        (TOPICS.events(device_id), event_of(device_id)),
        (TOPICS.telemetry(device_id), device_telemetry(device_id, 4.0)),
    ]
    return [(topic, encode(message)) for topic, message in messages]


def new_ingest(database, **options) -> FleetIngest:
    _, sessions = database
    return FleetIngest(
        sessions,
        TOPICS,
        on_fetch=lambda request: None,
        flush_s=0.01,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        **options,
    )


def count(engine: Engine, table: type, **where: str) -> int:
    query = select(func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(getattr(table, name) == value)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def dead_letters(engine: Engine) -> list[DeadLetterRow]:
    with Session(engine) as session:
        query = select(DeadLetterRow).order_by(DeadLetterRow.device_id, DeadLetterRow.kind)
        return list(session.scalars(query))


def test_a_message_the_database_refuses_is_dead_lettered_and_the_rest_lands(database) -> None:
    engine, _ = database
    refuse_devices(engine, "poison")
    ingest = new_ingest(database)
    others = [f"pi-{i}" for i in range(6)]
    batch = []
    for i, device in enumerate(others):
        batch += messages_of(device)
        if i == 2:  # the poison's hello, state, event and telemetry amid everyone else's
            batch += messages_of("poison")
    spent: list[int] = []

    async def scenario() -> None:
        for topic, payload in batch:
            ingest.submit(topic, payload)
        await ingest.drained(timeout=20)
        spent.append(ingest.counters.transactions)
        # Nothing left to retry: the loop sleeps (a few flush periods pass without a write).
        await asyncio.sleep(0.2)
        spent.append(ingest.counters.transactions)
        ingest.submit(*messages_of("poison")[0])  # the same hello again, as after a reconnect
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)

    with engine.connect() as connection:
        stored = set(connection.scalars(select(DeviceRow.id)))
    assert stored == set(others)
    assert count(engine, EventRow) == len(others)
    assert count(engine, TelemetryRow) == len(others)
    letters = dead_letters(engine)
    assert [(d.device_id, d.kind, d.error_type) for d in letters] == [
        ("poison", kind, "IntegrityError") for kind in KINDS
    ]
    repeats = {"events": 1, "hello": 2, "state": 1, "telemetry": 1}  # the hello was sent twice
    assert {d.kind: d.count for d in letters} == repeats
    for letter in letters:
        assert "refuse" in letter.error
        assert '"device_id":"poison"' in letter.payload
        assert letter.topic == f"{TOPICS.root}/devices/poison/{letter.kind}"
    counters = ingest.counters
    assert counters.dead_lettered == {
        ("events", "IntegrityError"): 1,
        ("hello", "IntegrityError"): 2,
        ("state", "IntegrityError"): 1,
        ("telemetry", "IntegrityError"): 1,
    }
    assert counters.written == 4 * len(others)
    assert counters.write_retries == 0
    # One batch, halved around the four refused messages: far fewer transactions than one per
    # message, and none once it was done.
    messages = len(batch)
    assert counters.batches == 2
    assert spent[0] <= 1 + 4 * 2 * math.ceil(math.log2(messages))
    assert spent[0] == spent[1]
    assert ingest.backlog == 0


def test_dead_letters_are_bounded_to_the_most_recent(database) -> None:
    engine, _ = database
    refuse_devices(engine, "poison")
    ingest = new_ingest(database, dead_letters_keep=3)

    async def scenario() -> None:
        for n in range(5):
            ingest.submit(*messages_of(f"poison-{n}")[0])
        ingest.submit(*messages_of("pi-ok")[0])
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)

    assert [d.device_id for d in dead_letters(engine)] == ["poison-2", "poison-3", "poison-4"]
    assert ingest.counters.dead_lettered == {("hello", "IntegrityError"): 5}
    assert count(engine, DeviceRow, id="pi-ok") == 1


@pytest.fixture
def write_lock(database, database_url: str) -> Iterator[threading.Event]:
    """Another connection holding the database's write lock (SQLite) or the fleet tables locked
    against writes (PostgreSQL) until the event it yields is set."""
    taken, release = threading.Event(), threading.Event()
    url = make_url(database_url)

    def hold() -> None:
        if url.get_backend_name() == "sqlite":
            lite = sqlite3.connect(str(url.database), isolation_level=None)
            lite.execute("BEGIN IMMEDIATE")
            taken.set()
            release.wait(20)
            lite.execute("ROLLBACK")
            lite.close()
            return
        import psycopg

        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as connection:  # a transaction until the block ends
            connection.execute("LOCK TABLE devices, events, telemetry IN EXCLUSIVE MODE")
            taken.set()
            release.wait(20)
            connection.rollback()

    holder = threading.Thread(target=hold, name="write-lock-holder")
    holder.start()
    assert taken.wait(20)
    yield release
    release.set()
    holder.join(20)


def test_a_locked_database_is_waited_out_and_nothing_is_dead_lettered(database, write_lock) -> None:
    engine, _ = database
    release = write_lock
    ingest = new_ingest(database)
    devices = [f"pi-{i}" for i in range(4)]

    async def scenario() -> None:
        for device in devices:
            for topic, payload in messages_of(device):
                ingest.submit(topic, payload)
        await until(lambda: ingest.counters.write_retries >= 2, timeout=20)
        assert ingest.counters.written == 0
        assert ingest.backlog == 4 * len(devices)  # held, not dropped
        release.set()
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)

    assert count(engine, DeviceRow) == len(devices)
    assert count(engine, EventRow) == len(devices)
    assert count(engine, TelemetryRow) == len(devices)  # not written twice either
    assert dead_letters(engine) == []
    assert ingest.counters.dead_lettered == {}
    assert ingest.counters.written == 4 * len(devices)
    assert ingest.counters.write_retries >= 2


def test_a_device_flooding_telemetry_loses_only_its_own_excess(database) -> None:
    engine, _ = database
    ingest = new_ingest(database, telemetry_rate=5.0, telemetry_burst=20)
    loop_time: list[float] = []

    async def scenario() -> None:
        start = asyncio.get_running_loop().time()
        for n in range(300):
            ingest.submit(TOPICS.telemetry("flood"), encode(device_telemetry("flood", 1.0)))
            if n % 30 == 0:
                ingest.submit(TOPICS.telemetry("calm"), encode(device_telemetry("calm", 2.0)))
        loop_time.append(asyncio.get_running_loop().time() - start)
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)

    assert count(engine, TelemetryRow, device_id="calm") == 10
    flood = count(engine, TelemetryRow, device_id="flood")
    assert 20 <= flood <= 20 + math.ceil(5.0 * loop_time[0]) + 1
    counters = ingest.counters
    assert counters.dropped == {"telemetry_rate_limited": 300 - flood}
    assert counters.telemetry_dropped == 300 - flood
    assert counters.received["telemetry"] == 310


def test_rate_buckets_refill_and_forget_idle_devices() -> None:
    now = [0.0]
    limiter = DeviceRateLimiter(2.0, 4, max_devices=3, clock=lambda: now[0])

    assert [limiter.allow("a") for _ in range(5)] == [True] * 4 + [False]
    now[0] += 0.5  # one token back
    assert [limiter.allow("a") for _ in range(2)] == [True, False]
    for device in ("b", "c", "d"):  # over the cap: the least recently used ("a") goes
        limiter.allow(device)
    assert len(limiter) == 3
    now[0] += 2.0  # a full refill later every bucket is as good as new: all forgotten
    limiter.allow("e")
    assert len(limiter) == 1


def test_future_timestamps_are_clamped_to_arrival_and_counted(database) -> None:
    engine, _ = database
    ingest = new_ingest(database)
    year_3000 = datetime(2199, 1, 1, tzinfo=UTC)  # inside the wire's era, far ahead of now
    fast = device_telemetry("fast", 1.0).model_copy(
        update={"window_start": year_3000, "window_end": year_3000}
    )
    late_event = event_of("fast").model_copy(update={"at": year_3000})
    before = datetime.now(UTC)

    async def scenario() -> None:
        ingest.submit(TOPICS.telemetry("fast"), encode(fast))
        ingest.submit(TOPICS.events("fast"), encode(late_event))
        for topic, payload in messages_of("honest"):
            ingest.submit(topic, payload)
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)
    after = datetime.now(UTC)

    def utc(value: datetime) -> datetime:  # SQLite hands back naive UTC
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    with Session(engine) as session:
        row = session.scalars(select(TelemetryRow).where(TelemetryRow.device_id == "fast")).one()
        assert before <= utc(row.window_end) <= after
        event = session.scalars(select(EventRow).where(EventRow.device_id == "fast")).one()
        assert before <= utc(event.at) <= after
    assert ingest.counters.clamped == {
        ("telemetry", "window_start"): 1,
        ("telemetry", "window_end"): 1,
        ("events", "at"): 1,
    }
    assert count(engine, TelemetryRow, device_id="honest") == 1  # untouched, and not counted


def test_a_device_flooding_states_and_events_costs_bounded_memory_and_its_newest_state_lands(
    database,
) -> None:
    engine, _ = database
    ingest = new_ingest(database, event_rate=5.0, event_burst=20, status_rate=5.0, status_burst=10)
    held: list[int] = []

    async def scenario() -> None:
        for n in range(1, 1001):
            state = device_state("flood", active=slot("1", n)).model_copy(update={"seq": n})
            ingest.submit(TOPICS.state("flood"), encode(state))
            ingest.submit(TOPICS.events("flood"), encode(event_of("flood")))
            held.append(len(ingest._held))
        for topic, payload in messages_of("calm"):
            ingest.submit(topic, payload)
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)

    assert max(held) == 1  # one state waits for the flooding device, however many it sends
    with Session(engine) as session:
        flood = session.get(DeviceRow, "flood")
        assert flood.state_seq == 1000  # the newest state was written
        assert flood.reported_last_serial == 1000
        assert session.get(DeviceRow, "calm") is not None
    counters = ingest.counters
    assert count(engine, EventRow, device_id="calm") == 1
    assert 20 <= count(engine, EventRow, device_id="flood") <= 30
    assert counters.dropped["events_rate_limited"] == 1000 - count(
        engine, EventRow, device_id="flood"
    )
    assert 980 <= counters.dropped["superseded"] <= 990


def test_full_batches_go_at_once_and_a_part_batch_waits_for_more(database) -> None:
    """A transaction costs mostly per batch and per device in it: after the full batches, the
    telemetry left over waits one more flush for company; a state or event waits no longer than
    a flush, as always, and takes the part batch with it."""
    engine, _ = database
    ingest = new_ingest(database, batch_size=10)
    ingest.flush_s = 0.5
    written: list[tuple[float, int, int]] = []  # (when, telemetry, others)
    ingest.after_write.append(
        lambda stored: written.append(
            (
                time.monotonic(),
                sum(isinstance(m, Telemetry) for m in stored),
                sum(not isinstance(m, Telemetry) for m in stored),
            )
        )
    )

    async def scenario() -> None:
        for n in range(25):
            ingest.submit(TOPICS.telemetry(f"d{n}"), encode(device_telemetry(f"d{n}", 1.0)))
        await until(lambda: len(written) == 2)
        ingest.submit(TOPICS.events("d0"), encode(event_of("d0")))
        await until(lambda: len(written) == 3, timeout=0.9)  # the event goes in this flush
        await ingest.drained(timeout=5)

    started = time.monotonic()
    run_ingest(ingest, scenario)

    assert [(t, o) for _, t, o in written] == [(10, 0), (10, 0), (5, 1)]
    assert written[1][0] - started < 0.4, "full batches do not wait"
    assert written[2][0] - written[1][0] > 0.4, "the part batch waited a flush"
    assert count(engine, TelemetryRow) == 25
