"""edgefleet.agent.api_server: deadlines on every read, a fixed pool fed by a bounded queue,
503 past it, and a stop that ends every thread. Real sockets on loopback, a trivial handler."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from edgefleet.agent.api_server import (
    BoundedHTTPServer,
    DeadlineReader,
    RequestClock,
    ServerLimits,
    linger,
)

LIMITS = ServerLimits(workers=2, queue_size=2, read_timeout_s=0.5, idle_timeout_s=0.3)


def test_clock_gives_idle_time_then_read_time_from_the_first_byte():
    clock = RequestClock(LIMITS, started=time.monotonic() - 1.0)
    assert clock.remaining() < 0  # idle since accept for longer than the idle timeout
    clock.received()
    assert 0.4 < clock.remaining() <= 0.5
    clock.received()  # later bytes do not extend the deadline
    assert clock.remaining() <= 0.5
    clock.next_request()
    assert not clock.reading
    assert 0.2 < clock.remaining() <= 0.3


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def trickle(theirs: socket.socket, reader: DeadlineReader, gap_s: float) -> None:
    buffer = bytearray(16)
    while True:
        theirs.sendall(b"b")
        assert reader.readinto(buffer) == 1
        time.sleep(gap_s)


def test_reader_times_out_a_trickle_at_the_deadline(pair):
    ours, theirs = pair
    clock = RequestClock(LIMITS, started=time.monotonic())
    reader = DeadlineReader(ours, clock, write_timeout_s=2.0)
    buffer = bytearray(16)
    theirs.sendall(b"a")
    start = time.monotonic()
    assert reader.readinto(buffer) == 1
    with pytest.raises(TimeoutError):
        trickle(theirs, reader, gap_s=0.1)  # a byte every 0.1 s never extends the deadline
    assert 0.45 < time.monotonic() - start < 1.0
    assert clock.timed_out
    assert ours.gettimeout() == 2.0  # left for the writes


def test_reader_past_its_deadline_still_takes_bytes_that_arrived(pair):
    ours, theirs = pair
    clock = RequestClock(LIMITS, started=time.monotonic() - 10)
    reader = DeadlineReader(ours, clock, write_timeout_s=2.0)
    theirs.sendall(b"GET / HTTP/1.1\r\n\r\n")  # queued while the connection waited for a worker
    buffer = bytearray(64)
    assert reader.readinto(buffer) == 18
    assert clock.reading


def test_reader_past_its_deadline_with_nothing_arrived_times_out_at_once(pair):
    ours, _ = pair
    clock = RequestClock(LIMITS, started=time.monotonic() - 10)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        DeadlineReader(ours, clock, write_timeout_s=2.0).readinto(bytearray(8))
    assert time.monotonic() - start < 0.1
    assert not clock.reading


def test_linger_drops_what_still_arrives_then_returns(pair):
    ours, theirs = pair
    theirs.sendall(b"x" * 100_000)
    theirs.shutdown(socket.SHUT_WR)
    start = time.monotonic()
    linger(ours, seconds=2.0)
    assert time.monotonic() - start < 0.5  # returned at the peer's end of stream
    assert theirs.recv(1) == b""  # and we half-closed our side


class Echo(BaseHTTPRequestHandler):
    """Answers every GET with 200 'ok', reading through the server's deadline reader."""

    protocol_version = "HTTP/1.1"
    server: BoundedHTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile, self.clock = self.server.open_reader(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except TimeoutError:
            self.close_connection = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BoundedHTTPServer]:
    limits = getattr(request, "param", LIMITS)
    server = BoundedHTTPServer(("127.0.0.1", 0), Echo, limits, name="test-pool")
    server.start_workers()
    accept = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-pool-accept"
    )
    accept.start()
    yield server
    server.shutdown()
    server.server_close()
    server.stop_workers()
    accept.join(5)


def connect(server: BoundedHTTPServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=5)


def get(server: BoundedHTTPServer) -> bytes:
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return b"".join(iter(lambda: sock.recv(4096), b""))


def test_pool_serves_with_fixed_named_threads(server):
    before = {t.name for t in threading.enumerate()}
    for _ in range(5):
        assert get(server).endswith(b"\r\n\r\nok")
    assert {"test-pool-worker-1", "test-pool-worker-2"} <= before
    assert {t.name for t in threading.enumerate()} == before  # no thread per connection


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


SLOW_IDLE = ServerLimits(workers=2, queue_size=2, read_timeout_s=2.0, idle_timeout_s=2.0)


@pytest.mark.parametrize("server", [SLOW_IDLE], indirect=True)
def test_over_the_queue_new_connections_get_503_with_retry_after(server):
    idle = []
    for index in range(SLOW_IDLE.workers + SLOW_IDLE.queue_size):
        idle.append(connect(server))  # the workers take two, the queue holds two
        wait_for(lambda i=index: server.waiting == max(0, i + 1 - SLOW_IDLE.workers))
    try:
        response = get(server)
        assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 1\r\n" in response
        assert b"at capacity (2 workers busy, 2 connections waiting)" in response
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: b"200 OK" in get(server))  # the idle ones were closed: it serves again


def test_idle_connections_are_closed_after_the_idle_timeout(server):
    socks = [connect(server) for _ in range(3)]
    start = time.monotonic()
    for sock in socks:
        assert sock.recv(1) == b""
        sock.close()
    # two in the workers from accept, the third queued behind them: ~0.3 s each round at most
    assert time.monotonic() - start < 2 * LIMITS.idle_timeout_s + 0.5


def test_stop_wakes_workers_blocked_in_reads(server):
    held = [connect(server) for _ in range(2)]
    for sock in held:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # a request begun: the reads wait up to 0.5 s
    start = time.monotonic()
    server.shutdown()
    server.stop_workers()
    assert time.monotonic() - start < 0.4
    assert not [t for t in threading.enumerate() if t.name.startswith("test-pool-worker")]
    for sock in held:
        sock.close()
