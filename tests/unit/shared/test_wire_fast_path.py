"""The one-pass decoder of the hot kinds (telemetry, state, event) accepts and refuses exactly
what the general decoder does: same message, or same error type and text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.shared import (
    DeviceState,
    Event,
    EventType,
    Telemetry,
    WireFormatError,
    decode_versioned,
    encode,
    wire,
)
from support.samples import device_state, device_telemetry, slot

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
SAMPLES: list[tuple[type, bytes]] = [
    (Telemetry, encode(device_telemetry("dev-1", 2.5, end=NOW, histogram=True))),
    (Telemetry, encode(device_telemetry("dev-1", 2.5, end=NOW), version=1)),
    (DeviceState, encode(device_state("dev-1", active=slot("1", 3, sha256="ab" * 32), at=NOW))),
    (Event, encode(Event(device_id="dev-1", type=EventType.SWAPPED, at=NOW, serial=3))),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@contextmanager
def general_path_only() -> Iterator[None]:
    saved = dict(wire._FAST_ENVELOPES)
    wire._FAST_ENVELOPES.clear()
    try:
        yield
    finally:
        wire._FAST_ENVELOPES.update(saved)


def outcome(payload: bytes, expected: type) -> object:
    try:
        return decode_versioned(payload, expected)
    except WireFormatError as e:
        return type(e), str(e)


def assert_same(payload: bytes, expected: type) -> None:
    fast = outcome(payload, expected)
    with general_path_only():
        general = outcome(payload, expected)
    assert fast == general


def paths(value: object, prefix: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def replaced(document: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copy


@pytest.mark.parametrize(("expected", "payload"), SAMPLES)
def test_valid_samples_take_the_fast_path(expected, payload):
    fast = wire._decode_fast(payload, wire._FAST_ENVELOPES[expected])
    assert fast is not None
    with general_path_only():
        assert fast == decode_versioned(payload, expected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_any_field_replaced_decodes_alike(sample, data):
    expected, payload = sample
    document = json.loads(payload)
    path = data.draw(st.sampled_from(list(paths(document))))
    new = data.draw(json_values)
    mutated = json.dumps(replaced(document, path, new), allow_nan=True).encode()
    assert_same(mutated, expected)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_any_byte_edit_decodes_alike(sample, data):
    expected, payload = sample
    at = data.draw(st.integers(0, len(payload)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.binary(max_size=4) | st.sampled_from([b"\\ud800", b"NaN", b"1e999"]))
    assert_same(payload[:at] + insert + payload[at + cut :], expected)


@pytest.mark.parametrize(
    "edit",
    [
        (b'"v":2', b'"v":2.0'),
        (b'"v":2', b'"v":true'),
        (b'"v":2', b'"v":3'),
        (b'"v":2', b'"v":2,"extra":1'),
        (b'"device_id":"dev-1"', b'"device_id":"dev-1\\ud800"'),
        (b'"device_id":"dev-1"', b'"device_id":"x","device_id":"dev-1"'),
        (b'"requests":50', b'"requests":' + b"9" * 5000),
        (b'"cpu_percent":', b'"cpu_percent":NaN,"_":'),
    ],
)
def test_known_edge_cases_decode_alike(edit):
    old, new = edit
    payload = SAMPLES[0][1]
    assert old in payload
    assert_same(payload.replace(old, new, 1), Telemetry)
