"""Device clocks are untrusted: timestamps ahead of the receiver's clock are clamped to it.

Every wire timestamp already lies in the era :data:`edgefleet.shared.bounds.Timestamp` allows;
within it, a device whose clock runs fast (no RTC, no NTP yet, or hostile) could still date its
telemetry, events and states far in the future, which would put them ahead of everything real
on a page, keep them past any retention and win every "latest" comparison. A receiver passes
each message through :func:`clamp_future` with its own clock: what lies more than ``skew``
ahead becomes "now", and the receiver counts how many fields it changed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

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


def _clamp(value: Any, now: datetime, latest: datetime, path: str, clamped: list[str]) -> Any:
    if isinstance(value, datetime):
        if value > latest:
            clamped.append(path)
            return now
        return value
    if isinstance(value, BaseModel):
        changes = {}
        for name in type(value).model_fields:
            field = getattr(value, name)
            new = _clamp(field, now, latest, f"{path}.{name}" if path else name, clamped)
            if new is not field:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    if isinstance(value, tuple):
        items = [_clamp(v, now, latest, f"{path}.{i}", clamped) for i, v in enumerate(value)]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return tuple(items) if changed else value
    return value
