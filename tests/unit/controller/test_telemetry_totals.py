"""The /metrics telemetry totals: windows merged exactly per (model, version, device group), the
classic buckets exact counts that only grow, v1 and coarse windows counted apart, and the series
and device maps bounded."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.controller.telemetry_totals import (
    LE_EDGES_MS,
    NO_GROUP,
    SeriesKey,
    SeriesSnapshot,
    TelemetryTotals,
)
from edgefleet.shared.bounds import MAX_HISTOGRAM_BUCKETS, MAX_HISTOGRAM_SCALE, MAX_LATENCY_MS
from edgefleet.shared.histogram import SCALE, Histogram, index_range
from support.latency_windows import latencies, model_stats, window
from support.samples import device_hello


class LabelTable:
    """The devices' labels as the fleet table would hold them, counting the lookups."""

    def __init__(self, labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.labels = dict(labels or {})
        self.looked_up: list[set[str]] = []

    def __call__(self, device_ids: Collection[str]) -> dict[str, Mapping[str, str]]:
        self.looked_up.append(set(device_ids))
        return {d: self.labels[d] for d in device_ids if d in self.labels}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def series_of(totals: TelemetryTotals) -> dict[SeriesKey, SeriesSnapshot]:
    return {s.key: s for s in totals.snapshot().series}


def exact_counts(values: list[float]) -> list[int]:
    """How many values are at most each edge, counted from the values themselves."""
    return [sum(1 for v in values if v <= edge) for edge in LE_EDGES_MS]


def test_windows_merge_per_version_and_group_into_exact_cumulative_buckets() -> None:
    rng = random.Random(7)
    labels = LabelTable({"pi-1": {"group": "plant-3"}, "pi-2": {"group": "plant-3"}})
    totals = TelemetryTotals(labels)
    sent: dict[SeriesKey, list[float]] = {}
    for i in range(30):
        device = ("pi-1", "pi-2", "pi-3")[i % 3]
        group = "plant-3" if device != "pi-3" else NO_GROUP
        v1, v2 = latencies(rng, rng.randint(1, 80)), latencies(rng, rng.randint(1, 80), 9.0)
        totals.add_written(
            [window(device, model_stats(v1, errors=1), model_stats(v2, version="2"))]
        )
        sent.setdefault(SeriesKey("tiny", "1", group), []).extend(v1)
        sent.setdefault(SeriesKey("tiny", "2", group), []).extend(v2)

    series = series_of(totals)
    assert set(series) == set(sent)
    for key, values in sent.items():
        s = series[key]
        assert s.buckets == tuple(exact_counts(values))
        assert s.buckets == tuple(Histogram.of_values(values).cumulative(LE_EDGES_MS))
        assert s.totals.histogram.count == s.totals.requests == len(values)
        assert s.totals.histogram.sum == pytest.approx(sum(values))
        assert s.totals.errors == (10 if key.version == "1" else 0) * (
            2 if key.group != NO_GROUP else 1
        )
        assert s.totals.summary_only_windows == 0
    # every device's labels were read once, the first time it was heard of
    assert labels.looked_up == [{"pi-1"}, {"pi-2"}, {"pi-3"}]


def test_a_hello_sets_the_group_of_the_windows_after_it() -> None:
    labels = LabelTable({"pi-1": {"group": "old"}})
    totals = TelemetryTotals(labels, group_label="site")
    totals.add_written([window("pi-1", model_stats([1.0]))])  # the table has no "site" label
    hello = device_hello("pi-1", labels={"site": "plant-3", "group": "ignored"})
    totals.add_written([hello, window("pi-1", model_stats([2.0, 3.0]))])
    series = series_of(totals)
    assert series[SeriesKey("tiny", "1", NO_GROUP)].totals.requests == 1
    assert series[SeriesKey("tiny", "1", "plant-3")].totals.requests == 2
    assert labels.looked_up == [{"pi-1"}]  # the hello told the rest
    assert totals.snapshot().group_label == "site"


def test_v1_and_coarse_windows_count_apart_from_the_buckets() -> None:
    totals = TelemetryTotals(LabelTable())
    totals.add_written(
        [
            window("old-1", model_stats([1.0, 2.0, 40.0], histogram=False)),
            window("new-1", model_stats([1.0, 2.0])),
            window("odd-1", model_stats([1.5, 3.0, 700.0], scale=-1)),  # powers of 4: too coarse
            window("idle-1", model_stats([], client_errors=4)),  # only refused requests
        ]
    )
    (s,) = totals.snapshot().series
    assert s.totals.requests == 3 + 2 + 3
    assert s.totals.client_errors == 4
    assert s.totals.summary_only_windows == 1
    assert s.totals.coarse_windows == 1
    assert s.totals.histogram.count == 2
    assert s.buckets == tuple(exact_counts([1.0, 2.0]))


def test_a_series_without_histogram_windows_has_no_buckets() -> None:
    totals = TelemetryTotals(LabelTable())
    totals.add_written([window("old-1", model_stats([1.0], histogram=False))])
    (s,) = totals.snapshot().series
    assert s.buckets is None
    assert s.totals.summary_only_windows == 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=8),  # the window's scale: every one >= the edges'
            st.lists(st.floats(min_value=0.0, max_value=60_000.0, allow_nan=False), max_size=40),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_buckets_only_grow_and_stay_exact_whatever_the_scales(
    windows: list[tuple[int, list[float]]],
) -> None:
    totals = TelemetryTotals(LabelTable())
    seen: list[float] = []
    before = [0] * len(LE_EDGES_MS)
    for scale, values in windows:
        totals.add_written([window("pi-1", model_stats(values, scale=scale))])
        seen.extend(values)
        (s,) = totals.snapshot().series
        if not seen:
            assert s.buckets is None
            continue
        assert s.buckets is not None
        assert list(s.buckets) == exact_counts(seen)
        assert all(a <= b for a, b in zip(s.buckets, s.buckets[1:], strict=False))  # cumulative
        assert all(a <= b for a, b in zip(before, s.buckets, strict=True))  # monotonic in time
        assert s.buckets[-1] <= s.totals.histogram.count == len(seen)
        before = list(s.buckets)


def test_new_series_beyond_the_cap_are_dropped_and_counted_until_an_old_one_idles() -> None:
    clock = Clock()
    totals = TelemetryTotals(LabelTable(), max_series=3, evict_idle_s=600, clock=clock)
    for version in ("1", "2", "3"):
        totals.add_written([window("pi-1", model_stats([1.0], version=version))])
    clock.now += 300
    totals.add_written([window("pi-1", model_stats([1.0], version="1"))])  # "1" fed again
    totals.add_written([window("pi-1", model_stats([1.0], version="4"))])
    snapshot = totals.snapshot()
    assert [s.key.version for s in snapshot.series] == ["1", "2", "3"]
    assert snapshot.dropped_windows == 1
    assert snapshot.evicted_series == 0

    clock.now += 301  # "2" (fed first) has idled 601 s, "1" only 301 s
    totals.add_written([window("pi-1", model_stats([1.0, 2.0], version="4"))])
    snapshot = totals.snapshot()
    assert [s.key.version for s in snapshot.series] == ["1", "3", "4"]
    assert snapshot.evicted_series == 1
    assert series_of(totals)[SeriesKey("tiny", "4", NO_GROUP)].totals.requests == 2
    assert snapshot.max_series == 3


def test_the_device_groups_remembered_are_bounded() -> None:
    labels = LabelTable({f"pi-{i}": {"group": f"g{i % 2}"} for i in range(10)})
    totals = TelemetryTotals(labels, max_devices=4)
    for i in range(10):
        totals.add_written([window(f"pi-{i}", model_stats([1.0]))])
    totals.add_written([window("pi-0", model_stats([1.0]))])  # forgotten: read again
    assert len(totals._groups) == 4
    assert labels.looked_up[-1] == {"pi-0"}
    series = series_of(totals)
    assert series[SeriesKey("tiny", "1", "g0")].totals.requests == 6
    assert series[SeriesKey("tiny", "1", "g1")].totals.requests == 5


def test_bad_bounds_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_series"):
        TelemetryTotals(LabelTable(), max_series=0)


def test_a_series_stays_within_the_wire_range_at_the_agents_scale_whatever_is_sent() -> None:
    low, high = index_range(SCALE)
    totals = TelemetryTotals(LabelTable())
    for value in (0.0011, MAX_LATENCY_MS, 0.5):  # the two ends, at the finest scale there is
        totals.add_written([window("pi-1", model_stats([value], scale=MAX_HISTOGRAM_SCALE))])
    (s,) = totals.snapshot().series
    histogram = s.totals.histogram
    assert histogram.scale == SCALE
    assert len(histogram.counts) <= high - low + 1 <= MAX_HISTOGRAM_BUCKETS
    assert s.buckets == tuple(exact_counts([0.0011, MAX_LATENCY_MS, 0.5]))
    assert histogram.count == 3


def test_versions_the_registry_does_not_hold_take_at_most_a_tenth_of_the_series() -> None:
    deployed = {("tiny", str(v)) for v in range(5)}
    asked: list[tuple[str, str]] = []

    def registered(model_id: str, version: str) -> bool:
        asked.append((model_id, version))
        return (model_id, version) in deployed

    totals = TelemetryTotals(LabelTable(), max_series=20, registered=registered)
    # a hostile device reports 50 invented versions: 2 of them (a tenth of 20) get a series
    for n in range(50):
        totals.add_written([window("evil", model_stats([1.0], version=f"made-up-{n}"))])
    for version in range(5):  # the deployed versions all find room, in every group
        totals.add_written([window("pi-1", model_stats([1.0], version=str(version)))])
        totals.add_written([window("pi-2", model_stats([1.0], version=str(version)))])
    snapshot = totals.snapshot()
    versions = sorted(s.key.version for s in snapshot.series)
    assert versions == sorted(["made-up-0", "made-up-1", *[str(v) for v in range(5)]])
    assert snapshot.dropped_windows == 48  # counted, not silently lost
    # the registry is asked once per version without a series, not once per window
    totals.add_written([window("pi-1", model_stats([1.0], version="0"))])
    assert asked.count(("tiny", "0")) == 1
