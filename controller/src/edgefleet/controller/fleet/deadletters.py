"""Dead letters: device messages the database refused even when written alone, kept for the
operator in a bounded table. A repeat of the same (device, kind, error type) counts up its row
instead of adding one; beyond ``keep`` rows the least recently received go.

Synchronous; the ingest calls :func:`record` on its worker thread, in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.tables import DeadLetterRow
from edgefleet.shared import WireModel

PAYLOAD_EXCERPT_CHARS = 2048
ERROR_CHARS = 1024
TOPIC_CHARS = 256
ERROR_TYPE_CHARS = 128
_ELLIPSIS = "…"


@dataclass(frozen=True)
class DeadLetter:
    """One refused message, as it is stored: every text already bounded and storable."""

    device_id: str
    kind: str
    topic: str
    error_type: str
    error: str
    payload: str
    received_at: datetime

    @classmethod
    def of(
        cls,
        message: WireModel,
        error: BaseException,
        *,
        device_id: str,
        kind: str,
        topic: str,
        received_at: datetime,
    ) -> DeadLetter:
        """The dead letter of ``message``, which the database refused with ``error``."""
        return cls(
            device_id=device_id,
            kind=kind,
            topic=_bounded(topic, TOPIC_CHARS),
            error_type=_bounded(type(error).__name__, ERROR_TYPE_CHARS),
            error=_bounded(_reason(error), ERROR_CHARS),
            payload=_bounded(_excerpt(message), PAYLOAD_EXCERPT_CHARS),
            received_at=received_at,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device_id, self.kind, self.error_type)


def _reason(error: BaseException) -> str:
    # What the database said, without the statement and its parameters SQLAlchemy adds.
    if isinstance(error, StatementError) and error.orig is not None:
        return str(error.orig)
    return str(error)


def _excerpt(message: WireModel) -> str:
    # The message as it was decoded; JSON escapes every control character, NUL included. Only
    # the first PAYLOAD_EXCERPT_CHARS characters are kept, so a message is at most dumped once.
    return message.model_dump_json()


def _bounded(text: str, limit: int) -> str:
    # Error texts quote values: keep them storable in TEXT (no NUL, no lone surrogate) and short.
    text = text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def record(session: Session, letters: Iterable[DeadLetter], *, keep: int) -> None:
    """Store ``letters`` (repeats count up their row), then drop all but the ``keep`` rows
    received last."""
    merged: dict[tuple[str, str, str], tuple[DeadLetter, int]] = {}
    for letter in letters:
        _, repeats = merged.get(letter.key, (letter, 0))
        merged[letter.key] = (letter, repeats + 1)  # the latest letter of a key describes it
    if not merged:
        return
    for letter, repeats in merged.values():
        _upsert(session, letter, repeats)
    prune(session, keep=keep)


def _upsert(session: Session, letter: DeadLetter, repeats: int) -> None:
    values: dict[str, Any] = {
        "device_id": letter.device_id,
        "kind": letter.kind,
        "topic": letter.topic,
        "error_type": letter.error_type,
        "error": letter.error,
        "payload": letter.payload,
        "count": repeats,
        "first_received_at": letter.received_at,
        "received_at": letter.received_at,
    }
    latest = ("topic", "error", "payload", "received_at")
    dialect = session.get_bind().dialect.name
    if dialect in {"sqlite", "postgresql"}:
        # One statement, so two controllers dead-lettering the same key cannot collide.
        insert = (sqlite if dialect == "sqlite" else postgresql).insert(DeadLetterRow)
        statement = insert.values(values)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["device_id", "kind", "error_type"],
                set_={
                    "count": DeadLetterRow.count + statement.excluded.count,
                    **{name: statement.excluded[name] for name in latest},
                },
            )
        )
        return
    existing = session.scalar(
        select(DeadLetterRow.id).where(
            DeadLetterRow.device_id == letter.device_id,
            DeadLetterRow.kind == letter.kind,
            DeadLetterRow.error_type == letter.error_type,
        )
    )
    if existing is None:
        session.add(DeadLetterRow(**values))
        session.flush()
        return
    session.execute(
        update(DeadLetterRow)
        .where(DeadLetterRow.id == existing)
        .values(count=DeadLetterRow.count + repeats, **{name: values[name] for name in latest})
    )


def prune(session: Session, *, keep: int) -> None:
    """Delete every row but the ``keep`` received last."""
    beyond = (
        select(DeadLetterRow.id)
        .order_by(DeadLetterRow.received_at.desc(), DeadLetterRow.id.desc())
        .offset(keep)
    )
    session.execute(delete(DeadLetterRow).where(DeadLetterRow.id.in_(beyond)))
