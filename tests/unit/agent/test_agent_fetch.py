"""edgefleet.agent.fetch over HTTP: Range requests, servers that ignore Range, bad bytes, and
sources that drip, stall or never answer, cut off in wall-clock time with nothing left over."""

from __future__ import annotations

import errno
import hashlib
import itertools
import threading
import time
from collections.abc import Callable

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent.errors import StorageError
from edgefleet.agent.fetch import HttpRangeFetcher, MqttChunkFetcher, _runs
from edgefleet.agent.mqtt_session import MqttSession
from edgefleet.agent.settings import AgentSettings
from edgefleet.shared import ArtifactRef, DownloadError, HashMismatchError, Reassembler, Topics
from support.mqtt import wait_until
from support.slow_http import SilentTcp, SlowSource
from support.tmpfs import fill_up, small_tmpfs

DATA = bytes(range(256)) * 10
CHUNK = 100


@pytest.fixture
def settings(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("x")
    return AgentSettings(
        device_id="d",
        controller_key=key,
        data_dir=tmp_path,
        http_timeout_s=5,
        max_bad_chunks=2,
        idle_every_s=0.05,
    )


def artifact(url: str, data: bytes = DATA, chunk: int = CHUNK) -> ArtifactRef:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return ArtifactRef(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk,
        chunk_sha256=tuple(hashlib.sha256(c).hexdigest() for c in chunks),
        http_url=url,
    )


def reassembler(tmp_path, ref: ArtifactRef) -> Reassembler:
    return Reassembler(
        tmp_path / "out",
        sha256=ref.sha256,
        size=ref.size,
        chunk_size=ref.chunk_size,
        chunk_sha256=ref.chunk_sha256,
        durable=False,
    )


def http_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgefleet-agent-fetch-http")]


def connections_to(port: int) -> list:
    """This process's client sockets to ``port`` (any state): none may outlive a fetch."""
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr[1] == port]


class IdleClock:
    """An ``idle`` that records when it ran, optionally raising on its n-th call."""

    def __init__(self, raise_on: int | None = None) -> None:
        self.calls: list[float] = [time.monotonic()]
        self.raise_on = raise_on

    def __call__(self) -> None:
        self.calls.append(time.monotonic())
        if self.raise_on is not None and len(self.calls) > self.raise_on:
            raise RuntimeError("a newer manifest")

    @property
    def longest_gap(self) -> float:
        return max(b - a for a, b in itertools.pairwise([*self.calls, time.monotonic()]))


def fetch(settings, tmp_path, url: str, deadline_s: float, **kwargs) -> None:
    """Run one fetch of DATA from ``url`` into a fresh reassembler and check what it got."""
    ref = artifact(url)
    target = reassembler(tmp_path, ref)
    stop = kwargs.pop("stop", threading.Event())
    HttpRangeFetcher(settings).fetch(ref, target, time.monotonic() + deadline_s, stop, **kwargs)
    assert target.finalize().read_bytes() == DATA


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except Exception as e:  # noqa: BLE001 - returned to the test
        return e, time.monotonic() - started
    return None, time.monotonic() - started


def assert_nothing_left(source: SlowSource) -> None:
    assert http_workers() == []  # ended before fetch() returned
    assert connections_to(source.port) == []


# -- what the fetcher downloads -------------------------------------------------------------
@pytest.mark.parametrize("honour_range", [True, False])
def test_fetches_only_missing_runs(tmp_path, settings, honour_range):
    with SlowSource(DATA, honour_range=honour_range) as source:
        ref = artifact(source.url())
        target = reassembler(tmp_path, ref)
        for index in (0, 1, 5):  # already on disk from an earlier attempt
            target.accept(index, DATA[index * CHUNK : (index + 1) * CHUNK])
        fetcher = HttpRangeFetcher(settings)
        fetcher.fetch(ref, target, time.monotonic() + 10, threading.Event())
        assert sorted(fetcher.last.requested) == [
            i for i in range(ref.chunk_count) if i not in (0, 1, 5)
        ]
        assert target.finalize().read_bytes() == DATA
        # two runs are missing; a server ignoring Range serves both from its one body
        assert len(source.gets) == (2 if honour_range else 1)
        assert_nothing_left(source)


def test_tampered_bytes_are_refused(tmp_path, settings):
    with SlowSource(bytes(len(DATA))) as source:
        ref = artifact(source.url())
        with pytest.raises(HashMismatchError):
            HttpRangeFetcher(settings).fetch(
                ref, reassembler(tmp_path, ref), time.monotonic() + 10, threading.Event()
            )
        assert_nothing_left(source)


def test_a_wrong_content_range_is_a_transport_error_not_tampering(tmp_path, settings):
    with SlowSource(DATA, content_range="bytes 0-99/2560") as source:
        ref = artifact(source.url())
        target = reassembler(tmp_path, ref)
        target.accept(0, DATA[:CHUNK])
        with pytest.raises(DownloadError, match="answered bytes=100-2559 with 'bytes 0-99/2560'"):
            HttpRangeFetcher(settings).fetch(ref, target, time.monotonic() + 10, threading.Event())
        assert_nothing_left(source)


def test_a_server_error_is_a_download_error(tmp_path, settings):
    with SlowSource(DATA, status=503) as source:
        with pytest.raises(DownloadError, match="HTTP Error 503"):
            fetch(settings, tmp_path, source.url(), 10)
        assert_nothing_left(source)


def test_a_redirect_to_another_scheme_is_not_followed(tmp_path, settings):
    with SlowSource(DATA, location="ftp://127.0.0.1/a") as source:
        with pytest.raises(DownloadError, match="unknown url type: ftp"):
            fetch(settings, tmp_path, source.url(), 10)
        assert source.gets == ["bytes=0-2559"]


def test_a_redirect_within_http_is_followed(tmp_path, settings):
    with SlowSource(DATA) as target, SlowSource(DATA, location=target.url()) as source:
        fetch(settings, tmp_path, source.url(), 10)
        assert (len(source.gets), len(target.gets)) == (1, 1)
        assert_nothing_left(target)


def test_unreachable_server_is_a_download_error(tmp_path, settings):
    from support.mosquitto import free_port

    with pytest.raises(DownloadError, match="failed"):
        fetch(settings, tmp_path, f"http://127.0.0.1:{free_port()}/a", 10)
    assert http_workers() == []


def test_a_chunk_that_cannot_be_written_is_a_storage_error(tmp_path, settings):
    with SlowSource(DATA) as source:
        ref = artifact(source.url())
        with small_tmpfs(tmp_path / "disk", "256k") as disk:
            target = reassembler(disk, ref)
            fill_up(disk)  # the disk fills up once the download has begun
            with pytest.raises(StorageError, match=r"storing chunk 0 in .*") as raised:
                HttpRangeFetcher(settings).fetch(
                    ref, target, time.monotonic() + 10, threading.Event()
                )
        assert raised.value.errno == errno.ENOSPC  # not mistaken for a failing server
        assert_nothing_left(source)


def test_idle_runs_while_a_long_response_is_read(tmp_path, settings):
    with SlowSource(
        DATA, drip_s=0.0002
    ) as source:  # one response of 2560 bytes over a second or so
        idle = IdleClock()
        fetch(settings, tmp_path, source.url(), 30, idle=idle)
        assert len(source.gets) == 1
        assert len(idle.calls) > 5  # idle all along the one response
        assert idle.longest_gap < 0.3
        assert_nothing_left(source)


# -- sources that drip, stall or never answer -----------------------------------------------
def test_a_dripping_source_is_cut_off_at_the_deadline(tmp_path, settings):
    """1 byte per 50 ms: every recv succeeds, so no socket timeout ever fires. The fetch's
    deadline does, in wall-clock time, and commands are served all along."""
    settings = settings.model_copy(update={"http_timeout_s": 30.0})
    with SlowSource(DATA, drip_s=0.05) as source:
        idle = IdleClock()
        error, took = timed(lambda: fetch(settings, tmp_path, source.url(), 1.0, idle=idle))
        assert isinstance(error, DownloadError)
        assert str(error) == (
            f"HTTP download from {source.url()} cut off at the download deadline "
            "(fetch_timeout_s), 26 of 26 chunks missing"
        )
        assert 1.0 <= took < 1.6
        assert idle.longest_gap < 0.3  # the updater kept acting on commands
        assert_nothing_left(source)
        assert source.disconnected.wait(2)  # the agent hung up; the server saw it


def test_a_source_slower_than_a_chunk_per_http_timeout_is_too_slow(tmp_path, settings):
    """A stall rule on top of the deadline: no whole chunk for http_timeout_s ends the try
    early (the downloader then retries or moves to the other source)."""
    settings = settings.model_copy(update={"http_timeout_s": 0.5})
    with SlowSource(DATA, drip_s=0.02) as source:  # 100-byte chunks take 2 s
        error, took = timed(lambda: fetch(settings, tmp_path, source.url(), 30))
        assert isinstance(error, DownloadError)
        assert "too slow: no whole chunk of 100 bytes in 0.5s (http_timeout_s)" in str(error)
        assert 0.5 <= took < 1.1
        assert_nothing_left(source)


def test_a_fast_enough_source_is_not_too_slow(tmp_path, settings):
    settings = settings.model_copy(update={"http_timeout_s": 0.5})
    with SlowSource(DATA, drip_s=0.0003) as source:  # a chunk per ~0.05 s: slow but steady
        fetch(settings, tmp_path, source.url(), 30)
        assert_nothing_left(source)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_answers_is_cut_off(tmp_path, settings, scheme):
    """Accepted, then silence: no status line (http), no TLS ServerHello (https)."""
    settings = settings.model_copy(update={"http_timeout_s": 30.0})
    with SlowSource(DATA, silent=True) if scheme == "http" else SilentTcp() as source:
        idle = IdleClock()
        error, took = timed(lambda: fetch(settings, tmp_path, source.url(scheme), 1.0, idle=idle))
        assert isinstance(error, DownloadError)
        assert "cut off at the download deadline" in str(error)
        assert 1.0 <= took < 1.6
        assert idle.longest_gap < 0.3
        assert_nothing_left(source)
        assert source.disconnected.wait(2)


def test_stopping_cuts_a_blocked_read_short(tmp_path, settings):
    settings = settings.model_copy(update={"http_timeout_s": 30.0})
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with SlowSource(DATA, drip_s=0.05) as source:
        error, took = timed(lambda: fetch(settings, tmp_path, source.url(), 30, stop=stop))
        assert isinstance(error, DownloadError)
        assert str(error) == "the agent is stopping"
        assert took < 0.3 + 0.5
        assert_nothing_left(source)


def test_an_idle_that_raises_ends_the_transfer(tmp_path, settings):
    """A command or a newer manifest handled in ``idle`` may end the download: the worker
    and its socket go with it."""
    with SlowSource(DATA, drip_s=0.05) as source:
        error, took = timed(
            lambda: fetch(settings, tmp_path, source.url(), 30, idle=IdleClock(raise_on=4))
        )
        assert isinstance(error, RuntimeError)
        assert took < 1.0
        assert_nothing_left(source)
        assert source.disconnected.wait(2)


# -- the MQTT fetcher keeps the same cadence ------------------------------------------------
@pytest.mark.parametrize("connected", [True, False])
def test_mqtt_fetch_calls_idle_every_idle_every_s(tmp_path, settings, mosquitto, connected):
    """Whether the broker answers, nobody serves chunks, or the session is offline, idle runs
    every ``idle_every_s`` and the deadline holds."""
    settings = settings.model_copy(
        update={"broker_url": mosquitto.url, "topic_root": "edgefleet-test/fetch/v1"}
    )
    session = MqttSession(
        settings, on_message=lambda t, p: None, on_connected=lambda: None, will=("w/x", b"")
    )
    if connected:
        session.start()
        wait_until(session.connected.is_set, timeout=10)
    try:
        ref = artifact("http://unused").model_copy(update={"mqtt_topic": "edgefleet-test/c/x"})
        fetcher = MqttChunkFetcher(session, Topics(settings.topic_root), settings)
        idle = IdleClock()
        started = time.monotonic()
        with pytest.raises(DownloadError, match="MQTT download stalled"):
            fetcher.fetch(ref, reassembler(tmp_path, ref), started + 1.0, threading.Event(), idle)
        assert 1.0 <= time.monotonic() - started < 1.5
        assert idle.longest_gap < 0.15
    finally:
        session.stop()


def test_runs():
    assert _runs([]) == []
    assert _runs([0, 1, 2, 5, 7, 8]) == [(0, 2), (5, 5), (7, 8)]


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_runs_cover_exactly_the_indices(indices):
    runs = _runs(sorted(indices))
    covered = [i for first, last in runs for i in range(first, last + 1)]
    assert covered == sorted(indices)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))  # maximal runs
