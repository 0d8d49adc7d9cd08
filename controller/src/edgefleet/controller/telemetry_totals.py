"""Running totals of what written telemetry reports, for ``/metrics``: each window's latency
histogram merged exactly into one per (model, version, device group), with request, error and
window counts, so Prometheus sees counters that only grow and histograms it can aggregate.

A device's group is the value of one of its hello labels (``group`` unless configured; ``none``
when the device has no such label), learnt from the hellos ingest writes and, for a device first
heard of before this process started, read once from the database. Memory is bounded: at most
``max_series`` series, where a new series may replace the least recently fed one only when that
one has been idle for ``evict_idle_s`` (a forgotten series that comes back restarts at zero, a
counter reset Prometheus handles); otherwise the window is dropped and counted. At most
``max_devices`` device groups are remembered. Devices name the model and version they report
on, so a hostile one could invent names to fill every slot: versions the registry does not hold
may take at most a tenth of the slots (``max_unregistered``; what is over is dropped and
counted), so what a hostile device invents never crowds out the versions actually deployed.

Concurrency: :meth:`TelemetryTotals.add_written` runs on ingest's worker thread after each
batch is written, :meth:`TelemetryTotals.snapshot` on a scrape's worker thread; one lock guards
the totals, and no histogram arithmetic of a scrape runs under it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.registry.tables import ModelRow, ModelVersionRow
from edgefleet.shared import Hello, Telemetry, WireModel
from edgefleet.shared.histogram import SCALE, Histogram, le_edges
from edgefleet.shared.messages import ModelStats

log = logging.getLogger(__name__)

# Classic bucket edges (ms): the powers of two from 2**-7 to 2**14 ms, bucket edges of every
# exponential histogram at scale >= 0, so cumulative counts at them are exact, not estimates.
EDGE_SCALE = 0
LE_EDGES_MS: tuple[float, ...] = tuple(le_edges(EDGE_SCALE))
DEFAULT_GROUP_LABEL = "group"
NO_GROUP = "none"
DEFAULT_MAX_SERIES = 1_000
DEFAULT_EVICT_IDLE_S = 3_600.0
DEFAULT_MAX_DEVICES = 100_000

LabelLookup = Callable[[Collection[str]], Mapping[str, Mapping[str, str]]]
VersionLookup = Callable[[str, str], bool]  # (model, version) -> registered?
REGISTRY_REFRESH_S = 2.0


class SeriesKey(NamedTuple):
    model_id: str
    version: str
    group: str


@dataclass(slots=True)
class SeriesTotals:
    """One (model, version, group)'s totals since this process started (or the series came
    back after it was evicted)."""

    # At most the agent's scale: a finer window is brought down to it before it is added, so a
    # series spans at most ~1,070 buckets (every latency the wire admits) whatever devices send.
    histogram: Histogram = field(default_factory=lambda: Histogram(SCALE))
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    summary_only_windows: int = 0  # requests but no histogram: a wire v1 agent
    coarse_windows: int = 0  # a histogram coarser than the edges (scale < EDGE_SCALE)
    fed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    """One series as a scrape reads it: a copy of its totals, and its histogram's cumulative
    counts at :data:`LE_EDGES_MS` (None until a window with a histogram arrived)."""

    key: SeriesKey
    totals: SeriesTotals
    buckets: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class TotalsSnapshot:
    series: list[SeriesSnapshot]
    max_series: int
    dropped_windows: int
    evicted_series: int
    group_label: str


def labels_in_database(sessions: sessionmaker[Session]) -> LabelLookup:
    """A lookup of devices' hello labels in the fleet table (for devices heard of before this
    process started, whose hellos it has not seen)."""

    def lookup(device_ids: Collection[str]) -> dict[str, Mapping[str, str]]:
        query = select(DeviceRow.id, DeviceRow.labels).where(DeviceRow.id.in_(device_ids))
        with sessions() as session:
            return {device_id: labels or {} for device_id, labels in session.execute(query)}

    return lookup


def versions_in_registry(
    sessions: sessionmaker[Session], clock: Callable[[], float] = time.monotonic
) -> VersionLookup:
    """Whether the registry holds a model version, from a cached set read again (at most every
    :data:`REGISTRY_REFRESH_S`) when asked about a version it does not hold."""
    known: set[tuple[str, str]] = set()
    read_at = -math.inf

    def lookup(model_id: str, version: str) -> bool:
        nonlocal known, read_at
        if (model_id, version) in known:
            return True
        if clock() - read_at < REGISTRY_REFRESH_S:
            return False
        query = select(ModelRow.name, ModelVersionRow.version).join(ModelVersionRow.model)
        with sessions() as session:
            known = {(name, v) for name, v in session.execute(query)}
        read_at = clock()
        return (model_id, version) in known

    return lookup


class TelemetryTotals:
    """Latency histograms, requests and errors per (model, version, group), fed by ingest."""

    def __init__(
        self,
        lookup_labels: LabelLookup,
        *,
        group_label: str = DEFAULT_GROUP_LABEL,
        max_series: int = DEFAULT_MAX_SERIES,
        evict_idle_s: float = DEFAULT_EVICT_IDLE_S,
        max_devices: int = DEFAULT_MAX_DEVICES,
        registered: VersionLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_series < 1 or max_devices < 1:
            raise ValueError(
                f"max_series ({max_series}) and max_devices ({max_devices}) must be at least 1"
            )
        self.lookup_labels = lookup_labels
        self.group_label = group_label
        self.max_series = max_series
        self.evict_idle_s = evict_idle_s
        self.max_devices = max_devices
        self.clock = clock
        self.registered = registered  # None: every version counts as registered
        self.max_unregistered = max(1, max_series // 10)
        self.dropped_windows = 0  # model windows of a new series while the cap was reached
        self.unregistered_dropped_windows = 0  # ... of an unregistered version over its share
        self.evicted_series = 0
        self._lock = threading.Lock()
        self._series: OrderedDict[SeriesKey, SeriesTotals] = OrderedDict()  # least fed first
        self._unregistered: set[SeriesKey] = set()
        self._groups: dict[str, str] = {}  # device id -> group, oldest learnt first
        # the latest totals of each ingest worker process, and those of exited ones, merged
        self._remote: dict[str, TotalsSnapshot] = {}
        self._retired: TotalsSnapshot | None = None

    def group_in(self, labels: Mapping[str, str]) -> str:
        """The group of a device with these hello labels."""
        return labels.get(self.group_label) or NO_GROUP

    def add_written(self, messages: Iterable[WireModel]) -> None:
        """Count the telemetry of a written batch, and learn groups from its hellos (which the
        writer applies before the batch's telemetry, as this does)."""
        telemetry: list[Telemetry] = []
        with self._lock:
            for message in messages:
                if isinstance(message, Hello):
                    self._remember(message.device_id, self.group_in(message.labels))
                elif isinstance(message, Telemetry) and message.models:
                    telemetry.append(message)
            unknown = {t.device_id for t in telemetry} - self._groups.keys()
        found = self.lookup_labels(unknown) if unknown else {}  # a query, outside the lock
        registered = self._registration(telemetry)  # queries too, outside the lock
        with self._lock:
            groups = {d: self.group_in(found.get(d, {})) for d in unknown}
            for device_id, group in groups.items():
                self._remember(device_id, group)
            now = self.clock()
            for window in telemetry:
                device_id = window.device_id
                group = groups.get(device_id) or self._groups.get(device_id, NO_GROUP)
                for stats in window.models:
                    key = SeriesKey(stats.model_id, stats.version, group)
                    self._add(key, stats, now, registered.get((stats.model_id, stats.version)))

    def learn_group(self, device_id: str, group: str) -> None:
        """Remember a device's group learnt elsewhere (an ingest worker process is told the
        groups of the hellos the main process writes)."""
        with self._lock:
            self._remember(device_id, group)

    def set_remote(self, source: str, snapshot: TotalsSnapshot) -> None:
        """The latest totals of an ingest worker process, merged into every snapshot."""
        with self._lock:
            self._remote[source] = snapshot

    def retire_remote(self, source: str) -> None:
        """An ingest worker process exited: its last totals stay counted (Prometheus counters
        never go down), and its replacement starts from zero."""
        with self._lock:
            last = self._remote.pop(source, None)
            if last is not None:
                self._retired = last if self._retired is None else merge([self._retired, last])

    def _registration(self, telemetry: list[Telemetry]) -> dict[tuple[str, str], bool]:
        """Whether each version of the batch that has no series yet is registered."""
        if self.registered is None:
            return {}
        with self._lock:
            open_versions = {(k.model_id, k.version) for k in self._series}
        wanted = {
            (stats.model_id, stats.version) for window in telemetry for stats in window.models
        } - open_versions
        return {pair: self.registered(*pair) for pair in wanted}

    def _remember(self, device_id: str, group: str) -> None:
        self._groups.pop(device_id, None)
        self._groups[device_id] = group
        while len(self._groups) > self.max_devices:
            del self._groups[next(iter(self._groups))]

    def _add(self, key: SeriesKey, stats: ModelStats, now: float, registered: bool | None) -> None:
        series = self._series.get(key)
        if series is None:
            if registered is None and self.registered is not None:  # another group's series
                version = (key.model_id, key.version)
                registered = all((k.model_id, k.version) != version for k in self._unregistered)
            if registered is False and len(self._unregistered) >= self.max_unregistered:
                self.unregistered_dropped_windows += 1
                return
            series = self._open(key, now)
            if series is None:
                self.dropped_windows += 1
                return
            if registered is False:
                self._unregistered.add(key)
        else:
            self._series.move_to_end(key)
        series.fed_at = now
        series.requests += stats.requests
        series.errors += stats.errors
        series.client_errors += stats.client_errors
        histogram = stats.latency_hist
        if histogram is None:
            if stats.requests:
                series.summary_only_windows += 1
        elif histogram.scale < EDGE_SCALE:
            series.coarse_windows += 1
        elif histogram.count:
            series.histogram.merge(histogram)

    def _open(self, key: SeriesKey, now: float) -> SeriesTotals | None:
        if len(self._series) >= self.max_series:
            oldest, series = next(iter(self._series.items()))
            if now - series.fed_at < self.evict_idle_s:
                return None
            del self._series[oldest]
            self._unregistered.discard(oldest)
            self.evicted_series += 1
            log.info("forgot the idle /metrics series %s to make room for %s", oldest, key)
        series = self._series[key] = SeriesTotals()
        return series

    def snapshot(self) -> TotalsSnapshot:
        """Every series, its histogram as cumulative counts at :data:`LE_EDGES_MS`."""
        with self._lock:  # copies only: the cumulative counts are computed after
            copied = [
                (key, replace(totals, histogram=Histogram.of(totals.histogram)))
                for key, totals in self._series.items()
            ]
            dropped = self.dropped_windows + self.unregistered_dropped_windows
            evicted = self.evicted_series
        series = [
            SeriesSnapshot(key, totals, _cumulative(totals.histogram)) for key, totals in copied
        ]
        series.sort(key=lambda s: s.key)
        own = TotalsSnapshot(series, self.max_series, dropped, evicted, self.group_label)
        with self._lock:
            others = [*self._remote.values(), *([self._retired] if self._retired else [])]
        return merge([own, *others]) if others else own


def merge(snapshots: list[TotalsSnapshot]) -> TotalsSnapshot:
    """Totals of several processes as one: each series's counts added, histograms merged
    (exactly: they share the layout), drops and evictions added."""
    merged: dict[SeriesKey, SeriesTotals] = {}
    for snapshot in snapshots:
        for one in snapshot.series:
            totals = merged.setdefault(one.key, SeriesTotals())
            theirs = one.totals
            totals.requests += theirs.requests
            totals.errors += theirs.errors
            totals.client_errors += theirs.client_errors
            totals.summary_only_windows += theirs.summary_only_windows
            totals.coarse_windows += theirs.coarse_windows
            totals.fed_at = max(totals.fed_at, theirs.fed_at)
            if theirs.histogram.count:
                totals.histogram.merge(theirs.histogram)
    series = [SeriesSnapshot(k, t, _cumulative(t.histogram)) for k, t in merged.items()]
    series.sort(key=lambda s: s.key)
    first = snapshots[0]
    return TotalsSnapshot(
        series,
        first.max_series,
        sum(s.dropped_windows for s in snapshots),
        sum(s.evicted_series for s in snapshots),
        first.group_label,
    )


def _cumulative(histogram: Histogram) -> tuple[int, ...] | None:
    return tuple(histogram.cumulative(LE_EDGES_MS)) if histogram.count else None
