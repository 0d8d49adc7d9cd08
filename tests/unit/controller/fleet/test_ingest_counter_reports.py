"""An ingest worker's counter reports: what was counted since the last report, added in the main
process, gives the same counters as counting there; and how many workers a setting runs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.controller.config import Settings
from edgefleet.controller.fleet.ingest import DropReason, IngestCounters
from edgefleet.controller.fleet.ingest_workers import subscription, worker_count

KINDS = ["hello", "state", "events", "telemetry"]
step = st.one_of(
    st.tuples(st.just("count"), st.sampled_from(KINDS)),
    st.tuples(st.just("drop"), st.sampled_from(list(DropReason))),
    st.tuples(st.just("clamp"), st.sampled_from(KINDS)),
    st.tuples(st.just("dead"), st.sampled_from(KINDS)),
    st.tuples(st.just("written"), st.integers(0, 500)),
    st.just(("report",)),
)


def apply(counters: IngestCounters, action: tuple) -> None:
    if action[0] == "count":
        counters.count(action[1])
    elif action[0] == "drop":
        counters.drop(action[1])
    elif action[0] == "clamp":
        counters.clamp(action[1], ["at", "window_end"])
    elif action[0] == "dead":
        counters.dead_letter(action[1], "IntegrityError")
    elif action[0] == "written":
        counters.written += action[1]
        counters.batches += 1


@settings(max_examples=100, deadline=None)
@given(st.lists(step, max_size=60))
def test_reports_added_up_equal_the_worker_s_counters(actions: list[tuple]) -> None:
    worker, main = IngestCounters(), IngestCounters()
    reported = IngestCounters()
    for action in [*actions, ("report",)]:
        if action[0] == "report":
            delta = worker.since(reported)
            reported = worker.copy()
            main.add(delta)
        else:
            apply(worker, action)
    assert main == worker
    assert not worker.since(worker.copy()).counted()


def test_a_copy_does_not_share_its_maps() -> None:
    counters = IngestCounters()
    counters.count("telemetry")
    copied = counters.copy()
    counters.count("telemetry")
    assert copied.received == {"telemetry": 1}
    assert counters.received == {"telemetry": 2}


def test_worker_count_is_one_where_no_subscription_is_shared() -> None:
    shared = Settings(ingest_workers=3, share_group="controllers")
    assert worker_count(shared, embedded_broker=False) == 3
    assert worker_count(shared, embedded_broker=True) == 1  # amqtt: no shared subscriptions
    assert worker_count(Settings(ingest_workers=3, share_group=None), embedded_broker=False) == 1
    assert worker_count(Settings(), embedded_broker=False) == 0  # the default: in-process
    telemetry = "edgefleet/v1/devices/+/telemetry"
    assert subscription(shared, shared=True) == f"$share/controllers/{telemetry}"
    assert subscription(shared, shared=False) == telemetry
