"""A bounded HTTP/1.1 server for the local inference API: a fixed pool of worker threads fed by
a bounded queue of accepted connections, and a deadline on every read.

Concurrency: one named thread accepts; ``workers`` named threads each serve one connection at
a time from a queue of at most ``queue_size`` connections. A connection accepted while
``workers + queue_size`` are already queued or served is answered 503 with Retry-After on the
accepting thread (the socket is fresh, so the write cannot block) and closed after a short
linger. While connections wait, the handler closes its keep-alive connection after the
response (see ``waiting``), so a few busy clients cannot starve the others. A connection may
wait ``idle_timeout_s`` for its request to begin (from accept, or from the end of the previous
response) and then has ``read_timeout_s`` for its headers and body, however slowly they
trickle in; so slow or idle clients (slowloris) are closed on time, holding at most
``workers`` threads meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

log = logging.getLogger(__name__)

# A connection closed with its request unread would answer what arrives next with a reset,
# which can destroy the response before the client reads it: so it is half-closed, what still
# arrives is read and dropped for a while, and only then is it closed ("lingering close").
LINGER_S = 1.0
_MAX_LINGER_BYTES = 64 * 1024 * 1024  # read and dropped at most, per lingering connection
_MAX_LINGERING = 64  # refused connections lingering at once; the oldest is closed past it
_READ_BUFFER = 64 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Thread, queue and timing bounds of one :class:`BoundedHTTPServer`."""

    workers: int
    queue_size: int
    read_timeout_s: float
    idle_timeout_s: float
    retry_after_s: int = 1


class RequestClock:
    """The read deadline of one connection: ``idle_timeout_s`` until a request's first byte
    arrives, then ``read_timeout_s`` for the rest of its headers and body."""

    def __init__(self, limits: ServerLimits, started: float) -> None:
        self._limits = limits
        self._deadline = started + limits.idle_timeout_s
        self.reading = False  # bytes of the current request have arrived
        self.timed_out = False  # a read ran out of time

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def received(self) -> None:
        """Bytes of a request arrived: its read deadline starts now, if it has not yet."""
        if not self.reading:
            self.reading = True
            self._deadline = time.monotonic() + self._limits.read_timeout_s

    def next_request(self) -> None:
        """A response was sent: the connection may now idle until its next request."""
        self.reading = False
        self._deadline = time.monotonic() + self._limits.idle_timeout_s


class DeadlineReader(io.RawIOBase):
    """Reads from a socket, each ``recv`` bounded by what is left of the :class:`RequestClock`.

    Past the idle deadline, bytes that already arrived are still read (a connection that
    waited in the queue with its request sent is served); past the read deadline nothing is.
    The socket's timeout is set back to ``read_timeout_s`` after each read, for the writes.
    """

    def __init__(self, sock: socket.socket, clock: RequestClock, write_timeout_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._clock = clock
        self._write_timeout_s = write_timeout_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._clock.remaining()
        if remaining <= 0 and self._clock.reading:
            self._clock.timed_out = True
            raise TimeoutError("the client did not send its request in time")
        self._sock.settimeout(max(remaining, 0.0))  # 0.0: take what arrived, do not wait
        try:
            count = self._sock.recv_into(buffer)
        except (BlockingIOError, TimeoutError):
            self._clock.timed_out = True
            raise TimeoutError("the client did not send its request in time") from None
        finally:
            self._sock.settimeout(self._write_timeout_s)
        if count:
            self._clock.received()
        return count


@dataclass
class _Accepted:
    sock: socket.socket
    address: Any
    at: float


class BoundedHTTPServer(HTTPServer):
    """``HTTPServer`` with a fixed worker pool, a bounded queue and per-request deadlines.

    The handler class reads through :meth:`open_reader`. :meth:`serve_forever` runs the accept
    loop; :meth:`start_workers` and :meth:`stop_workers` own the pool.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        limits: ServerLimits,
        *,
        name: str,
    ) -> None:
        self.limits = limits
        self.request_queue_size = limits.queue_size  # the listen backlog, read by server_activate
        super().__init__(address, handler)
        self._name = name
        self._queue: queue.SimpleQueue[_Accepted | None] = queue.SimpleQueue()
        self._waiting = 0  # connections in the queue (the accept thread adds, workers take)
        self._admitted = 0  # connections queued or being served
        self._lock = threading.Lock()
        self._open: dict[socket.socket, float] = {}  # served now -> accepted at
        self._lingering: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self._workers: list[threading.Thread] = []
        self._stopping = False

    # -- the pool ---------------------------------------------------------------------------
    def start_workers(self) -> None:
        for index in range(self.limits.workers):
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-worker-{index + 1}", daemon=True
            )
            thread.start()
            self._workers.append(thread)

    def stop_workers(self, timeout: float = 5.0) -> None:
        """Close waiting and open connections (waking reads) and end every worker.

        Call after the accept loop stopped (``shutdown``).
        """
        with self._lock:
            self._stopping = True  # a worker taking a connection from now on closes it
            open_now = list(self._open)
        for _ in self._workers:
            self._queue.put(None)
        for sock in open_now:
            _shutdown(sock)  # wakes the worker blocked reading it
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(deadline - time.monotonic(), 0.0))
        while self._lingering:
            self.shutdown_request(self._lingering.popleft()[1])

    @property
    def waiting(self) -> int:
        """Accepted connections waiting for a worker."""
        return self._waiting

    def open_reader(self, sock: socket.socket) -> tuple[io.BufferedReader, RequestClock]:
        """A buffered reader of ``sock`` bounded by a new :class:`RequestClock`."""
        with self._lock:
            accepted_at = self._open.get(sock, time.monotonic())
        clock = RequestClock(self.limits, accepted_at)
        raw = DeadlineReader(sock, clock, self.limits.read_timeout_s)
        return io.BufferedReader(raw, _READ_BUFFER), clock

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._lock:
                self._waiting -= 1
                self._open[item.sock] = item.at
                stopping = self._stopping
            try:
                if stopping:
                    continue  # closed unserved, in finally
                self.finish_request(item.sock, item.address)
            except OSError as e:  # the client vanished (reset, timed out): routine
                log.debug("local inference API: connection from %s lost: %s", item.address, e)
            except Exception:  # a worker is a loop boundary: log it, serve the next
                log.exception("local inference API: error serving %s", item.address)
            finally:
                self.shutdown_request(item.sock)
                with self._lock:
                    self._open.pop(item.sock, None)
                    self._admitted -= 1

    # -- the accept thread ------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:  # capacity counts workers not yet awake to take their connection
            full = self._admitted >= self.limits.workers + self.limits.queue_size
            if not full:
                self._admitted += 1
                self._waiting += 1
        if full:
            self._refuse(request)
            return
        self._queue.put(_Accepted(request, client_address, time.monotonic()))

    def _refuse(self, sock: socket.socket) -> None:
        reason = (
            f"the local inference API is at capacity ({self.limits.workers} workers busy, "
            f"{self.limits.queue_size} connections waiting); retry"
        )
        body = json.dumps({"error": reason, "status": 503}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Retry-After: {self.limits.retry_after_s}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            sock.setblocking(False)
            sock.send(head + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        log.warning("local inference API at capacity: refused a connection with 503")
        self._lingering.append((time.monotonic() + LINGER_S, sock))  # closed by service_actions
        while len(self._lingering) > _MAX_LINGERING:
            self._lingering.popleft()[1].close()

    def service_actions(self) -> None:
        """Run by ``serve_forever`` between accepts: close lingering refused connections."""
        now = time.monotonic()
        for _ in range(len(self._lingering)):
            until, sock = self._lingering.popleft()
            try:
                done = now >= until or sock.recv(_READ_BUFFER) == b""
            except BlockingIOError:
                done = False
            except OSError:
                done = True
            if done:
                sock.close()
            else:
                self._lingering.append((until, sock))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished or timed out is routine; anything else is a bug to see.
        log.exception("local inference API: error serving %s", client_address)


def linger(sock: socket.socket, seconds: float = LINGER_S) -> None:
    """Half-close ``sock`` and drop what it still receives for up to ``seconds``, so the
    response already written reaches a client still sending its unread request."""
    deadline = time.monotonic() + seconds
    scratch = bytearray(_READ_BUFFER)
    dropped = 0
    try:
        sock.shutdown(socket.SHUT_WR)
        while dropped < _MAX_LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            count = sock.recv_into(scratch)
            if not count:
                return
            dropped += count
    except OSError:  # timed out, reset, or already closed: nothing more to wait for
        return


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its worker
        sock.shutdown(socket.SHUT_RDWR)
