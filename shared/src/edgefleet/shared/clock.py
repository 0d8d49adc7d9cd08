"""Device clocks are untrusted: timestamps ahead of the receiver's clock are clamped to it.

Every wire timestamp already lies in the era :data:`edgefleet.shared.bounds.Timestamp` allows;
within it, a device whose clock runs fast (no RTC, no NTP yet, or hostile) could still date its
telemetry, events and states far in the future, which would put them ahead of everything real
on a page, keep them past any retention and win every "latest" comparison. A receiver passes
each message through :func:`clamp_future` with its own clock: what lies more than ``skew``
ahead becomes "now", and the receiver counts how many fields it changed.
"""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any, Literal, TypeVar, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel

from edgefleet.shared.bounds import DEFAULT_CLOCK_SKEW

M = TypeVar("M", bound=BaseModel)


def clamp_future(
    message: M, now: datetime, skew: timedelta = DEFAULT_CLOCK_SKEW
) -> tuple[M, list[str]]:
    """``message`` with every timestamp later than ``now + skew`` set to ``now``, and the dotted
    names of the fields that were clamped (empty, and ``message`` itself, when none was)."""
    clamped: list[str] = []
    return _clamp(message, now, now + skew, "", clamped), clamped


def _may_hold_time(annotation: Any) -> bool:
    """Whether a field of this type can hold a timestamp, however deep (unknown types: yes)."""
    if annotation is Any or isinstance(annotation, TypeVar):
        return True
    if isinstance(annotation, type):
        if issubclass(annotation, datetime):
            return True
        if issubclass(annotation, BaseModel):
            if annotation in _VISITING:  # a recursive model: looked into as it comes
                return True
            return bool(_time_fields(annotation))
        if issubclass(annotation, str | int | float | bytes | Enum | UUID | date | timedelta):
            return False
        return annotation not in _NO_TIME_CONTAINERS  # a bare dict, list or tuple
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return False
    return any(_may_hold_time(arg) for arg in args if arg is not Ellipsis and arg is not None)


_NO_TIME_CONTAINERS: frozenset[type] = frozenset({type(None)})
_VISITING: set[type[BaseModel]] = set()


@functools.cache
def _time_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` that can hold a timestamp: the only ones :func:`clamp_future`
    looks at (telemetry carries hundreds of integers, and a pydantic isinstance is slow)."""
    _VISITING.add(model)
    try:
        return tuple(
            name for name, info in model.model_fields.items() if _may_hold_time(info.annotation)
        )
    finally:
        _VISITING.discard(model)


_KINDS: dict[type, str] = {}


def _kind(cls: type) -> str:
    """How :func:`_clamp` treats a value of this class (isinstance on a pydantic model class
    costs microseconds, and telemetry asks a few times per message)."""
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, datetime):
            kind = "datetime"
        elif issubclass(cls, BaseModel):
            kind = "model"
        elif issubclass(cls, tuple):
            kind = "tuple"
        else:
            kind = "other"
        _KINDS[cls] = kind  # the classes of validated wire models: a few dozen
    return kind


def _clamp(value: Any, now: datetime, latest: datetime, path: str, clamped: list[str]) -> Any:
    kind = _kind(type(value))
    if kind == "datetime":
        if value > latest:
            clamped.append(path)
            return now
        return value
    if kind == "model":
        model: BaseModel = value
        changes = {}
        for name in _time_fields(type(model)):
            field = getattr(value, name)
            new = _clamp(field, now, latest, f"{path}.{name}" if path else name, clamped)
            if new is not field:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    if kind == "tuple":
        items = [_clamp(v, now, latest, f"{path}.{i}", clamped) for i, v in enumerate(value)]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return tuple(items) if changed else value
    return value
