"""Fuzzing the ingest path on a real database: whatever hostile devices send (any bytes, valid
messages with any node replaced, extreme in-bound values), nothing escapes ``submit``, the
ingest task keeps draining, and an honest device's hello, state, event and telemetry all land."""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_harness import run_ingest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_ingest import event_of, messages_of

from edgefleet.controller.fleet.ingest import FleetIngest
from edgefleet.controller.fleet.tables import DeviceRow, EventRow, TelemetryRow
from edgefleet.shared import Topics, encode
from edgefleet.shared.topics import DeviceChannel
from support.samples import device_hello, device_state, device_telemetry, slot
from support.wire_fuzz import json_values, mutated

TOPICS = Topics("edgefleet-test/ingest/v1")
CHANNELS = {
    DeviceChannel.HELLO: ("hello", lambda d: device_hello(d)),
    DeviceChannel.STATE: ("state", lambda d: device_state(d, active=slot())),
    DeviceChannel.EVENTS: ("event", event_of),
    DeviceChannel.TELEMETRY: ("telemetry", lambda d: device_telemetry(d, 5.0)),
}
HONEST = itertools.count()


@st.composite
def hostile_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    channel = draw(st.sampled_from(sorted(CHANNELS)))
    device = draw(st.sampled_from(["evil", "evil-2"]))
    kind, build = CHANNELS[channel]
    body = json.loads(encode(build(device)))["body"]
    version = draw(st.sampled_from([1, 2, 3, "2"]))
    shape = draw(st.sampled_from(["mutated", "bytes", "value"]))
    if shape == "bytes":
        payload = draw(st.binary(max_size=256))
    else:
        content = draw(mutated(body)) if shape == "mutated" else draw(json_values)
        payload = json.dumps({"v": version, "kind": kind, "body": content}).encode()
    return TOPICS.device(device, channel), payload


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hostile=st.lists(hostile_messages(), min_size=1, max_size=12))
def test_no_hostile_message_escapes_or_blocks_the_ingest(database, hostile) -> None:
    engine, sessions = database
    ingest = FleetIngest(sessions, TOPICS, on_fetch=lambda request: None, flush_s=0.0)
    honest = f"honest-{next(HONEST)}"

    async def scenario() -> None:
        for i, (topic, payload) in enumerate(hostile):
            ingest.submit(topic, payload)  # nothing may escape
            if i == len(hostile) // 2:
                for honest_topic, honest_payload in messages_of(honest):
                    ingest.submit(honest_topic, honest_payload)
        await ingest.drained(timeout=20)

    run_ingest(ingest, scenario)

    with Session(engine) as session:
        assert session.get(DeviceRow, honest) is not None
        for table in (EventRow, TelemetryRow):
            rows = session.scalar(
                select(func.count()).select_from(table).where(table.device_id == honest)
            )
            assert rows == 1, table.__name__
        assert session.get(DeviceRow, honest).status == "serving"
