"""/metrics totals of several ingest processes merged into one: equal, series by series and
bucket by bucket, to one process's totals of all the windows; and an exited worker's counts
stay in the merge."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.controller.telemetry_totals import TelemetryTotals, TotalsSnapshot, merge
from support.latency_windows import latencies, model_stats, window

GROUPS = {"d0": {"group": "a"}, "d1": {"group": "b"}, "d2": {}}


def lookup(device_ids):
    return {d: GROUPS[d] for d in device_ids}


def windows(seed: int, n: int):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        device = rng.choice(sorted(GROUPS))
        values = latencies(rng, rng.randint(0, 30), median_ms=rng.choice([0.5, 3.0, 40.0]))
        version = rng.choice(["1", "2"])
        v1 = rng.random() < 0.2  # a wire v1 agent's summary-only window
        out.append(window(device, model_stats(values, version=version, histogram=not v1)))
    return out


def comparable(snapshot: TotalsSnapshot) -> list[tuple]:
    return [
        (s.key, s.totals.requests, s.totals.errors, s.totals.summary_only_windows,
         s.totals.histogram.count, round(s.totals.histogram.sum, 6), s.buckets)
        for s in snapshot.series
    ]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 60), parts=st.integers(1, 4))
def test_merged_totals_of_processes_equal_one_process_s_totals(
    seed: int, n: int, parts: int
) -> None:
    every = windows(seed, n)
    whole = TelemetryTotals(lookup)
    whole.add_written(every)
    shares = [TelemetryTotals(lookup) for _ in range(parts)]
    rng = random.Random(seed + 1)
    for w in every:  # a shared subscription hands each window to one of them
        rng.choice(shares).add_written([w])
    merged = merge([s.snapshot() for s in shares])
    assert comparable(merged) == comparable(whole.snapshot())


def test_the_main_process_exposes_its_workers_totals_and_keeps_an_exited_one_s() -> None:
    main = TelemetryTotals(lookup)
    first, second = TelemetryTotals(lookup), TelemetryTotals(lookup)
    every = windows(7, 40)
    first.add_written(every[:20])
    second.add_written(every[20:])
    main.set_remote("worker-0", first.snapshot())
    main.set_remote("worker-1", second.snapshot())
    both = TelemetryTotals(lookup)
    both.add_written(every)
    assert comparable(main.snapshot()) == comparable(both.snapshot())

    main.retire_remote("worker-0")  # it exited: its replacement starts from zero
    restarted = TelemetryTotals(lookup)
    more = windows(8, 10)
    restarted.add_written(more)
    main.set_remote("worker-0", restarted.snapshot())
    both.add_written(more)
    assert comparable(main.snapshot()) == comparable(both.snapshot())


def test_a_group_learnt_from_the_main_process_is_used_for_later_windows() -> None:
    worker = TelemetryTotals(lambda ids: {})  # the hello was not in the database yet
    worker.add_written([window("d0", model_stats([1.0]))])
    worker.learn_group("d0", "a")
    worker.add_written([window("d0", model_stats([2.0]))])
    groups = {s.key.group: s.totals.requests for s in worker.snapshot().series}
    assert groups == {"none": 1, "a": 1}
