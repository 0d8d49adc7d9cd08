"""Timestamps ahead of the receiver's clock by more than the skew become "now", by field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from edgefleet.shared import Outcome, OutcomeResult, generate_signing_key
from edgefleet.shared.bounds import DEFAULT_CLOCK_SKEW, EARLIEST
from edgefleet.shared.clock import clamp_future
from support.samples import SHA_A, device_state, device_telemetry, sample_messages, slot

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_only_what_is_beyond_the_skew_is_clamped_and_named():
    ahead = NOW + DEFAULT_CLOCK_SKEW + timedelta(seconds=1)
    outcome = Outcome(serial=2, sha256=SHA_A, result=OutcomeResult.SWAPPED, at=ahead)
    state = device_state("pi-1", active=slot()).model_copy(
        update={"updated_at": NOW + DEFAULT_CLOCK_SKEW, "last_outcome": outcome}
    )
    fixed, clamped = clamp_future(state, NOW)
    assert clamped == ["last_outcome.at"]
    assert fixed.last_outcome.at == NOW
    assert fixed.updated_at == NOW + DEFAULT_CLOCK_SKEW  # at the skew: kept
    assert state.last_outcome.at == ahead  # the original is untouched (frozen models)


def test_a_message_with_nothing_to_clamp_comes_back_as_itself():
    telemetry = device_telemetry("pi-1", 3.0)
    fixed, clamped = clamp_future(telemetry, telemetry.window_end)
    assert fixed is telemetry
    assert clamped == []


@given(
    start=st.timedeltas(min_value=timedelta(days=-3650), max_value=timedelta(days=36500)),
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    skew=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
)
def test_after_clamping_nothing_lies_beyond_the_skew(start, length, skew):
    telemetry = device_telemetry("pi-1", 3.0).model_copy(
        update={"window_start": NOW + start, "window_end": NOW + start + length}
    )
    fixed, clamped = clamp_future(telemetry, NOW, skew)
    for name in ("window_start", "window_end"):
        original, value = getattr(telemetry, name), getattr(fixed, name)
        assert value <= NOW + skew
        assert (name in clamped) == (original > NOW + skew)
        assert value == (NOW if name in clamped else original)


def _datetimes(value: object, path: str = "") -> list[str]:
    """Every timestamp in a message, found by walking all of it (what clamping must reach)."""
    if isinstance(value, datetime):
        return [path]
    if isinstance(value, BaseModel):
        return [
            found
            for name in type(value).model_fields
            for found in _datetimes(getattr(value, name), f"{path}.{name}" if path else name)
        ]
    if isinstance(value, tuple | list):
        return [found for i, item in enumerate(value) for found in _datetimes(item, f"{path}.{i}")]
    return []


def test_clamping_reaches_every_timestamp_of_every_message():
    ahead = NOW + timedelta(days=365)
    outcome = Outcome(serial=2, sha256=SHA_A, result=OutcomeResult.SWAPPED, at=ahead)
    messages = [
        *sample_messages(generate_signing_key()),
        device_state("pi-1", active=slot()).model_copy(update={"last_outcome": outcome}),
    ]
    for message in messages:
        everything = _datetimes(message)
        _, clamped = clamp_future(message, EARLIEST)  # every timestamp lies after this
        assert sorted(clamped) == sorted(everything), type(message).__name__
