"""Telemetry ingest in worker processes: the controller's answer to a fleet whose telemetry one
Python process cannot take.

One process reads, decodes and writes telemetry at about a fifth of the rate a bare MQTT client
receives it (``bench/ingest.py``): the MQTT client, the decoder and the database writer share one
interpreter lock with the API and the rollout engine. With ``ingest_workers = N`` the controller
starts N processes that each hold their own broker connection, subscribed to telemetry only
through the MQTT shared subscription ``$share/<share_group>/<root>/devices/+/telemetry`` (the
broker hands each window to one of them), and run the same :class:`FleetIngest` as the main
process: the same validation, clock clamp, per-device rate limit (each worker sees about 1/N of
a device's windows and admits 1/N of its rate), bounded queue, batched writes, dead letters and
retries. The main process keeps hellos, states, events and chunk requests, which are few and
which the rollout engine acts on.

Workers speak MQTT 3.1.1: paho parses an MQTT 5 PUBLISH's properties in Python, a third of its
cost per message, and telemetry needs none of them.

Each worker reports to the main process over a pipe: what its counters counted since the last
report, its backlog, and, at most every ``TOTALS_EVERY_S``, its ``/metrics`` totals. The main
process adds the counts to its own (``/api/health``, ``/metrics`` and the dashboard read one set
of counters), nudges the rollout engine after each written batch, and tells the workers the
device groups of the hellos it writes. A worker that exits is started again after a capped
backoff; its last totals stay counted. A worker whose main process is gone (the pipe closes)
stops. Telemetry is QoS 0: windows a worker held when it was killed are lost and the device's
next window is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import event

from edgefleet.controller.config import Settings
from edgefleet.controller.fleet.ingest import FleetIngest, IngestCounters
from edgefleet.controller.telemetry_totals import TelemetryTotals
from edgefleet.shared import Hello, WireModel
from edgefleet.shared.topics import DeviceChannel, Topics

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.25  # counters and backlog, also when nothing was written
TOTALS_EVERY_S = 1.0
STOP_TIMEOUT_S = 10.0
# A worker sends its totals every TOTALS_EVERY_S, idle or not: one silent this long is not
# reaching its event loop (a write that waits, a stopped process), and the backlog it last
# reported is no longer true.
STALL_S = 5.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
GC_THRESHOLD = 50_000


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to know (pickled to it)."""

    index: int
    settings: Settings
    broker_url: str
    subscription: str
    log_level: int = logging.INFO


@dataclass(frozen=True)
class Report:
    """A worker's counts since its previous report, and its backlog now."""

    counters: IngestCounters
    backlog: int
    batches: int  # batches written since the previous report


def subscription(settings: Settings, *, shared: bool) -> str:
    """The telemetry topic the workers subscribe to: shared among them (and among controller
    replicas in the same group) when ``shared``."""
    topic = Topics(settings.topic_root).all_devices(DeviceChannel.TELEMETRY)
    if shared and settings.share_group:
        return Topics.shared(settings.share_group, topic)
    return topic


# --- the worker process ------------------------------------------------------------------


def worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    """A worker process's entry point (``multiprocessing`` spawn)."""
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s ingest-worker-{spec.index} %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        asyncio.run(_Worker(spec, pipe).run())


class _Worker:
    def __init__(self, spec: WorkerSpec, pipe: Connection) -> None:
        from edgefleet.controller.service import broker_endpoint, open_database
        from edgefleet.controller.telemetry_totals import labels_in_database, versions_in_registry

        self.spec = spec
        self.pipe = pipe
        settings = spec.settings
        self.engine, sessions = open_database(settings)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _telemetry_durability)
            self.engine.dispose()  # the connection the schema check opened has not run it
        self.ingest = FleetIngest(
            sessions,
            Topics(settings.topic_root),
            on_fetch=lambda request: None,  # telemetry only: nothing else is subscribed
            batch_size=settings.ingest_batch,
            telemetry_queue=settings.ingest_queue,
            flush_s=settings.ingest_worker_flush_s,
            telemetry_rate=settings.device_telemetry_rate,
            telemetry_burst=settings.device_telemetry_burst,
            rate_limited_devices=settings.rate_limited_devices,
            dead_letters_keep=settings.dead_letters_keep,
            retry_initial_s=settings.ingest_retry_initial_s,
            retry_max_s=settings.ingest_retry_max_s,
            write_inline=True,  # this process only ingests: a writer thread would wait
        )
        self.totals = TelemetryTotals(
            labels_in_database(sessions),
            group_label=settings.metrics_group_label,
            max_series=settings.metrics_max_series,
            registered=versions_in_registry(sessions),
        )
        self.ingest.after_write.append(self.totals.add_written)
        self.ingest.after_batch.append(self._batch_written)
        self.endpoint = broker_endpoint(settings, spec.broker_url)
        self.reported = IngestCounters()
        self.batches = 0
        self.totals_at = 0.0
        self.stopping = asyncio.Event()

    def _batch_written(self) -> None:
        self.batches += 1

    def _send(self, kind: str, payload: object) -> None:
        try:
            self.pipe.send((kind, payload))
        except (BrokenPipeError, EOFError, OSError):  # the main process is gone
            self.stopping.set()

    def _report(self, *, totals: bool = False) -> None:
        counters = self.ingest.counters
        delta = counters.since(self.reported)
        self.reported = counters.copy()
        if delta.counted() or self.batches or self.ingest.backlog:
            self._send("report", Report(delta, self.ingest.backlog, self.batches))
        self.batches = 0
        now = time.monotonic()
        if totals or now - self.totals_at >= TOTALS_EVERY_S:
            self.totals_at = now
            self._send("totals", self.totals.snapshot())

    def _control(self) -> None:
        """Read what the main process sends: device groups, or stop; a closed pipe is a stop."""
        try:
            while self.pipe.poll():
                kind, payload = self.pipe.recv()
                if kind == "groups":
                    for device_id, group in payload:
                        self.totals.learn_group(device_id, group)
                elif kind == "stop":
                    self.stopping.set()
        except (EOFError, OSError):
            log.info("the controller's main process is gone; stopping")
            self.stopping.set()

    async def run(self) -> None:
        from edgefleet.controller.mqtt.bridge import BridgeOptions, MqttBridge

        bridge = MqttBridge(
            BridgeOptions(
                endpoint=self.endpoint,
                subscriptions=[(self.spec.subscription, 0)],
                client_id=f"edgefleet-ingest-{self.spec.index}-{uuid.uuid4().hex[:8]}",
                mqtt5=False,
                buffered_receive=True,  # telemetry only: read many packets per receive
            ),
            on_message=self.ingest.submit,
            on_connect=self._connected,
        )
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._control)
        tasks = [
            asyncio.create_task(bridge.run(), name="mqtt-bridge"),
            asyncio.create_task(self.ingest.run(), name="fleet-ingest"),
        ]
        gc.collect()
        gc.freeze()  # what start-up built lives forever: collections need not walk it
        # a decoded window is a few dozen objects that live until its batch is written: at the
        # default threshold the young generation was collected every few windows
        gc.set_threshold(GC_THRESHOLD, 20, 20)
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), REPORT_EVERY_S)
                self._report()
                for task in tasks:
                    if task.done():
                        task.result()  # a crashed task ends the worker; the parent restarts it
        finally:
            bridge.stop()
            tasks[0].cancel()  # nothing more is read; what was read is written
            with contextlib.suppress(TimeoutError):
                await self.ingest.drained(timeout=STOP_TIMEOUT_S / 2)
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.remove_reader(self.pipe.fileno())
            self._report(totals=True)
            self.engine.dispose()

    async def _connected(self) -> None:
        log.info("ingest worker %d subscribed to %s", self.spec.index, self.spec.subscription)
        self._send("connected", None)


def _telemetry_durability(dbapi_connection: Any, _record: Any) -> None:
    """SQLite in WAL mode without a sync per commit, for this process's connections only:
    after a power cut the last telemetry batches may be missing (as telemetry in flight is,
    QoS 0), never corrupt; an application crash loses nothing. The main process's writes
    (states, serials, rollouts) keep their sync."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


# --- the main process's side ---------------------------------------------------------------


@dataclass
class _Process:
    index: int
    process: BaseProcess | None = None
    pipe: Connection | None = None
    restarts: int = 0
    started_at: float = 0.0
    failures: int = 0  # consecutive quick exits, for the backoff
    connected: bool = False
    heard_at: float = 0.0  # when it last sent anything (monotonic)
    stalled: bool = False
    # groups are sent from ingest's writer thread, "stop" from the stopping thread: one at a time
    sending: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: tuple[str, Any]) -> None:
        pipe = self.pipe
        if pipe is not None:
            with self.sending, contextlib.suppress(OSError):
                pipe.send(message)


@dataclass
class IngestWorkers:
    """Starts, supervises and stops the ingest worker processes, and applies their reports."""

    specs: list[WorkerSpec]
    ingest: FleetIngest
    totals: TelemetryTotals
    on_batches: Callable[[], None]
    restarts: int = 0
    _workers: list[_Process] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def alive(self) -> int:
        return sum(1 for w in self._workers if w.process is not None and w.process.is_alive())

    @property
    def connected(self) -> int:
        return sum(1 for w in self._workers if w.connected)

    @property
    def stalled(self) -> int:
        """Workers that are subscribed and running but have sent nothing for ``STALL_S``."""
        return sum(1 for w in self._workers if w.stalled)

    def _check_stalls(self, now: float) -> None:
        for worker in self._workers:
            # once subscribed: one still starting (imports, database) is not connected, which
            # health already reports
            running = worker.process is not None and worker.process.is_alive()
            silent = running and worker.connected and now - worker.heard_at > STALL_S
            if silent and not worker.stalled:
                log.warning(
                    "ingest worker %d (pid %s) has sent nothing for %.0f s: it is not reading "
                    "telemetry, and the backlog it last reported (%d) may be out of date",
                    worker.index, worker.process.pid if worker.process else None,
                    now - worker.heard_at, self.ingest.remote_backlog.get(worker.index, 0),
                )  # fmt: skip
            elif worker.stalled and not silent:
                log.info("ingest worker %d is reporting again", worker.index)
            worker.stalled = silent

    def _start(self, worker: _Process) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded process
        ours, theirs = context.Pipe()
        spec = self.specs[worker.index]
        process = context.Process(
            target=worker_main, args=(spec, theirs), name=f"edgefleet-ingest-{spec.index}",
            daemon=True,
        )  # fmt: skip
        process.start()
        theirs.close()  # so the worker reads EOF once this process is gone
        worker.process, worker.pipe = process, ours
        worker.started_at = worker.heard_at = time.monotonic()
        worker.connected = worker.stalled = False
        assert self._loop is not None
        self._loop.add_reader(ours.fileno(), self._readable, worker)
        log.info("started ingest worker %d (pid %s)", spec.index, process.pid)

    def _readable(self, worker: _Process) -> None:
        pipe = worker.pipe
        if pipe is None:
            return
        try:
            while pipe.poll():
                kind, payload = pipe.recv()
                worker.heard_at = time.monotonic()
                self._apply(worker, kind, payload)
        except (EOFError, OSError):  # the worker exited; supervision restarts it
            self._detach(worker)

    def _apply(self, worker: _Process, kind: str, payload: Any) -> None:
        if kind == "report":
            self.ingest.counters.add(payload.counters)
            self.ingest.remote_backlog[worker.index] = payload.backlog
            if payload.batches:
                self.on_batches()
        elif kind == "totals":
            self.totals.set_remote(f"worker-{worker.index}", payload)
        elif kind == "connected":
            worker.connected = True

    def _detach(self, worker: _Process, *, reading: bool = True) -> None:
        if worker.pipe is not None:
            if reading and self._loop is not None:
                self._loop.remove_reader(worker.pipe.fileno())
            worker.pipe.close()
        worker.pipe = None
        worker.connected = worker.stalled = False
        self.ingest.remote_backlog.pop(worker.index, None)
        self.totals.retire_remote(f"worker-{worker.index}")

    def tell_groups(self, messages: list[WireModel]) -> None:
        """After-write hook of the main process's ingest: the groups of the hellos it wrote
        (a worker thread: the pipe's send is thread-safe for these small messages)."""
        groups = [(m.device_id, self.totals.group_in(m.labels)) for m in messages
                  if isinstance(m, Hello)]  # fmt: skip
        if not groups:
            return
        for worker in list(self._workers):
            worker.send(("groups", groups))

    async def run(self) -> None:
        """Start every worker, then restart any that exits, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._workers = [_Process(spec.index) for spec in self.specs]
        for worker in self._workers:
            self._start(worker)
        try:
            while True:
                await asyncio.sleep(0.5)
                self._check_stalls(time.monotonic())
                for worker in self._workers:
                    if worker.process is None or worker.process.is_alive():
                        continue
                    await self._restart(worker)
        finally:
            for worker in self._workers:  # from here on the pipes are read by _stop_all alone
                if worker.pipe is not None:
                    self._loop.remove_reader(worker.pipe.fileno())
            final = await asyncio.shield(asyncio.to_thread(self._stop_all))
            for worker, messages in final:
                for kind, payload in messages:
                    self._apply(worker, kind, payload)
                self._detach(worker, reading=False)

    async def _restart(self, worker: _Process) -> None:
        assert worker.process is not None
        code = worker.process.exitcode
        self._readable(worker)  # its last reports
        self._detach(worker)
        lived = time.monotonic() - worker.started_at
        worker.failures = worker.failures + 1 if lived < RESTART_MAX_S else 1
        delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (worker.failures - 1))
        log.error(
            "ingest worker %d (pid %s) exited with code %s after %.1f s; starting it again in "
            "%.1f s", worker.index, worker.process.pid, code, lived, delay,
        )  # fmt: skip
        worker.process = None
        await asyncio.sleep(delay)
        worker.restarts += 1
        self.restarts += 1
        self._start(worker)

    def _stop_all(self) -> list[tuple[_Process, list[tuple[str, Any]]]]:
        """Ask every worker to stop, wait for them to write what they read (killing those that
        take too long), and return what each sent meanwhile (a worker thread)."""
        for worker in self._workers:
            worker.send(("stop", None))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        final: list[tuple[_Process, list[tuple[str, Any]]]] = []
        for worker in self._workers:
            messages: list[tuple[str, Any]] = []
            process, pipe = worker.process, worker.pipe
            if process is not None:
                while process.is_alive() and time.monotonic() < deadline:
                    messages += _read_all(pipe, 0.1)  # a full pipe must not block its writer
                if process.is_alive():
                    log.warning("ingest worker %d did not stop in time; killing it", worker.index)
                    process.kill()
                process.join(5)
            messages += _read_all(pipe, 0)
            final.append((worker, messages))
        return final


def _read_all(pipe: Connection | None, wait_s: float) -> list[tuple[str, Any]]:
    if pipe is None:
        return []
    out: list[tuple[str, Any]] = []
    with contextlib.suppress(EOFError, OSError):
        while pipe.poll(wait_s):
            out.append(pipe.recv())
            wait_s = 0
    return out


def worker_count(settings: Settings, *, embedded_broker: bool) -> int:
    """How many ingest workers to run: the setting, but at most one without a shared
    subscription (the embedded broker has none, and ``share_group`` may be off), where two would
    each write every window."""
    wanted = settings.ingest_workers
    if wanted > 1 and (embedded_broker or not settings.share_group):
        log.warning(
            "ingest_workers = %d, but %s: running one ingest worker", wanted,
            "the embedded broker has no shared subscriptions" if embedded_broker
            else "share_group is off, so every worker would receive every window",
        )  # fmt: skip
        return 1
    return wanted
