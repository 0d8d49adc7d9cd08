"""The dead-letter table on a real database: repeats count up one row, every text is bounded and
storable, and only the most recently received rows are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from edgefleet.controller.fleet import deadletters
from edgefleet.controller.fleet.deadletters import DeadLetter
from edgefleet.controller.fleet.tables import DeadLetterRow
from edgefleet.shared import Event, EventType
from support.samples import device_hello

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def letter(device_id: str, error: Exception, *, at: datetime = START) -> DeadLetter:
    return DeadLetter.of(
        device_hello(device_id),
        error,
        device_id=device_id,
        kind="hello",
        topic=f"edgefleet/v1/devices/{device_id}/hello",
        received_at=at,
    )


def rows(sessions) -> list[DeadLetterRow]:
    with sessions() as session:
        query = select(DeadLetterRow).order_by(DeadLetterRow.received_at, DeadLetterRow.id)
        return list(session.scalars(query))


def test_repeats_of_a_device_kind_and_error_count_up_one_row(database) -> None:
    _, sessions = database
    with sessions.begin() as session:
        deadletters.record(
            session,
            [letter("pi", OverflowError("one")), letter("pi", OverflowError("two"))],
            keep=10,
        )
    with sessions.begin() as session:
        later = START + timedelta(minutes=1)
        deadletters.record(session, [letter("pi", OverflowError("three"), at=later)], keep=10)
        deadletters.record(session, [letter("pi", ValueError("other"), at=later)], keep=10)

    stored = rows(sessions)
    assert [(r.error_type, r.count, r.error) for r in stored] == [
        ("OverflowError", 3, "three"),  # the latest letter describes the row
        ("ValueError", 1, "other"),
    ]
    first = stored[0]
    assert first.first_received_at.replace(tzinfo=UTC) == START
    assert first.received_at.replace(tzinfo=UTC) == START + timedelta(minutes=1)


def test_texts_are_bounded_and_storable(database) -> None:
    _, sessions = database
    hostile = Event(
        device_id="pi",
        type=EventType.ERROR,
        at=START,
        reason="x" * 2000,  # with the other fields, more than an excerpt holds
    )
    dead = DeadLetter.of(
        hostile,
        ValueError("bad \x00 value \ud800 " + "y" * 5000),
        device_id="pi",
        kind="events",
        topic="edgefleet/v1/devices/pi/events",
        received_at=START,
    )
    with sessions.begin() as session:
        deadletters.record(session, [dead], keep=10)

    (stored,) = rows(sessions)
    assert len(stored.payload) == deadletters.PAYLOAD_EXCERPT_CHARS
    assert stored.payload.startswith('{"event_id":')
    assert stored.payload.endswith("…")
    assert len(stored.error) == deadletters.ERROR_CHARS
    assert stored.error.startswith("bad \\0 value ? y")


def test_only_the_most_recently_received_are_kept(database) -> None:
    _, sessions = database
    for n in range(8):
        with sessions.begin() as session:
            at = START + timedelta(seconds=n)
            deadletters.record(session, [letter(f"pi-{n}", OverflowError("x"), at=at)], keep=5)
    with sessions.begin() as session:  # a repeat makes an old one recent again
        at = START + timedelta(seconds=9)
        deadletters.record(session, [letter("pi-3", OverflowError("x"), at=at)], keep=5)
    with sessions.begin() as session:
        at = START + timedelta(seconds=10)
        deadletters.record(session, [letter("pi-8", OverflowError("x"), at=at)], keep=5)

    assert [r.device_id for r in rows(sessions)] == ["pi-5", "pi-6", "pi-7", "pi-3", "pi-8"]
