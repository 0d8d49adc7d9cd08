"""One artifact's HTTP Range requests on a short-lived worker thread, abortable at any instant.

Concurrency: the blocking transport (DNS, connect, TLS, status line, body) runs on one named
worker thread per fetch and hands whole chunks to the caller through a small bounded queue.
The caller (the updater thread) never blocks on the network: it waits on the queue in slices,
owns every deadline and keeps acting on commands. :meth:`HttpTransfer.close` shuts the
worker's sockets down, which ends a blocked read at once however slowly the source drips;
the worker closes them on its way out. Only DNS and the TCP connect cannot be cut short:
the resolver's and the socket timeout bound them.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import queue
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.shared.errors import DownloadError

log = logging.getLogger(__name__)

_QUEUE_CHUNKS = 2  # chunks read ahead of the caller: memory stays a few chunks whatever the size
_PUT_SLICE_S = 0.1  # how often a worker waiting on a full queue looks for an abort
_JOIN_S = 1.0  # how long close() waits for the worker once its sockets are shut down


@dataclass(frozen=True, slots=True)
class Requested:
    """The worker asked the source for chunks ``first..last``."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """One whole chunk of the body (its hash is the caller's to check)."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    """Every chunk asked for was handed over."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The source failed; the worker has stopped."""

    error: DownloadError


Item = Requested | Chunk | Finished | Failed


class SocketRegistry:
    """The sockets of one transfer, so another thread can cut them off mid-read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._aborted = False

    @property
    def aborted(self) -> bool:
        return self._aborted

    def add(self, sock: socket.socket) -> None:
        """Track ``sock``; one opened after :meth:`abort` is shut down at once."""
        with self._lock:
            self._sockets.append(sock)
            aborted = self._aborted
        if aborted:
            _shut(sock)

    def abort(self) -> None:
        """Shut every socket down: a read blocked in another thread returns (EOF) now."""
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def close_all(self) -> None:
        """Close every socket (the worker's last act; closing twice is harmless)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def ssl_socket_class(self) -> type[ssl.SSLSocket]:
        """An ``SSLSocket`` class that registers each socket before its TLS handshake, so a
        server dripping the handshake is cut off too (``SSLContext.sslsocket_class``)."""
        registry = self

        class RegisteredSSLSocket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                registry.add(self)
                super().do_handshake(block)

        return RegisteredSSLSocket


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for an SSLSocket: the TLS state is left alone for the
    # thread reading it, which sees EOF. Not connected yet, or closed: nothing to interrupt.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _register_connections(connection: http.client.HTTPConnection, sockets: SocketRegistry) -> None:
    """Register each TCP socket ``connection`` opens, as soon as it is connected (before a
    proxy tunnel or TLS), through the factory ``http.client`` keeps for that purpose."""
    create: Callable[..., socket.socket] = getattr(connection, "_create_connection")  # noqa: B009

    def create_registered(*args: Any, **kwargs: Any) -> socket.socket:
        sock = create(*args, **kwargs)
        sockets.add(sock)
        return sock

    setattr(connection, "_create_connection", create_registered)  # noqa: B010


class _RegisteredHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, *, sockets: SocketRegistry, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        _register_connections(self, sockets)


class _RegisteredHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, *, sockets: SocketRegistry, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        _register_connections(self, sockets)


class _RegisteredHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, sockets: SocketRegistry) -> None:
        super().__init__()
        self._sockets = sockets

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        sockets = self._sockets

        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            return _RegisteredHTTPConnection(host, sockets=sockets, **kwargs)

        return self.do_open(connection, req)


class _RegisteredHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, sockets: SocketRegistry) -> None:
        context = ssl.create_default_context()
        context.sslsocket_class = sockets.ssl_socket_class()
        super().__init__(context=context)
        self._sockets = sockets
        self._tls_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        sockets = self._sockets

        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            return _RegisteredHTTPSConnection(host, sockets=sockets, **kwargs)

        return self.do_open(connection, req, context=self._tls_context)


def _opener(sockets: SocketRegistry) -> urllib.request.OpenerDirector:
    """``urlopen``'s handlers for http and https only: a redirect to ``ftp:`` or ``file:`` is
    an error, not a way around the scheme check."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _RegisteredHTTPHandler(sockets),
        _RegisteredHTTPSHandler(sockets),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


class HttpTransfer:
    """GETs the chunk runs ``runs`` of ``url`` on a worker thread; :meth:`next` hands them over.

    A server that ignores Range (200) is read once from the start, and every chunk in
    ``runs`` is taken from that one body. Redirects and ``*_proxy`` variables are honoured,
    as by ``urllib.request.urlopen``.
    """

    def __init__(
        self,
        url: str,
        runs: list[tuple[int, int]],
        *,
        size: int,
        chunk_size: int,
        socket_timeout_s: float,
        thread_name: str,
    ) -> None:
        self.url = url
        self.runs = runs
        self.size = size
        self.chunk_size = chunk_size
        self.socket_timeout_s = socket_timeout_s
        self.sockets = SocketRegistry()
        self._items: queue.Queue[Item] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._opener = _opener(self.sockets)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    # -- caller side ------------------------------------------------------------------------
    def start(self) -> HttpTransfer:
        self._thread.start()
        return self

    def next(self, timeout: float) -> Item | None:
        """The worker's next item, or ``None`` if none came within ``timeout`` seconds."""
        try:
            return self._items.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> bool:
        """Stop the worker: cut its sockets, drop what it queued, wait a moment for it.

        Returns whether it ended; one still resolving or connecting ends by itself within
        the resolver's and the socket timeout, and closes its socket then.
        """
        self.sockets.abort()
        while True:  # a worker blocked on the full queue sees the abort at its next put
            try:
                self._items.get_nowait()
            except queue.Empty:
                break
        if self._thread.ident is None:
            return True  # never started
        self._thread.join(_JOIN_S)
        if self._thread.is_alive():
            log.warning(
                "HTTP worker for %s is still connecting; it ends within %gs",
                self.url,
                self.socket_timeout_s,
            )
            return False
        return True

    # -- worker side ------------------------------------------------------------------------
    def _put(self, item: Item) -> bool:
        while not self.sockets.aborted:
            try:
                self._items.put(item, timeout=_PUT_SLICE_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        error: DownloadError
        try:
            self._transfer()
            return
        except DownloadError as e:
            error = e
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            error = DownloadError(f"HTTP download from {self.url} failed: {e}")
        except Exception as e:  # the thread's boundary: the caller hears of it
            log.exception("HTTP worker for %s failed", self.url)
            error = DownloadError(f"HTTP download from {self.url} failed: {type(e).__name__}")
        finally:
            self.sockets.close_all()
        if not self.sockets.aborted:  # after an abort, its EOF is the caller's doing
            self._put(Failed(error))

    def _transfer(self) -> None:
        for number, (first, last) in enumerate(self.runs):
            start = first * self.chunk_size
            end = min(self.size, (last + 1) * self.chunk_size) - 1
            headers = {"Range": f"bytes={start}-{end}"}
            request = urllib.request.Request(self.url, headers=headers)  # noqa: S310 - scheme checked by the fetcher
            if not self._put(Requested(first, last)):
                return
            with self._opener.open(request, timeout=self.socket_timeout_s) as resp:
                if resp.status == 200:  # Range ignored: every chunk still wanted, from one body
                    for later in self.runs[number + 1 :]:
                        if not self._put(Requested(*later)):
                            return
                    self._whole_body(resp, number)
                    break
                if resp.status != 206:
                    raise DownloadError(f"HTTP {resp.status} for {self.url}")
                answered = resp.headers.get("Content-Range")
                if answered is not None and not answered.startswith(f"bytes {start}-"):
                    raise DownloadError(
                        f"{self.url} answered bytes={start}-{end} with {answered!r}"
                    )
                for index in range(first, last + 1):
                    if not self._put(Chunk(index, self._read_exact(resp, self._length(index)))):
                        return
        self._put(Finished())

    def _whole_body(self, resp: http.client.HTTPResponse, from_run: int) -> None:
        wanted = {i for first, last in self.runs[from_run:] for i in range(first, last + 1)}
        for index in range(max(wanted) + 1):
            data = self._read_exact(resp, self._length(index))  # one chunk in memory at a time
            if index in wanted and not self._put(Chunk(index, data)):
                return

    def _length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def _read_exact(self, resp: http.client.HTTPResponse, length: int) -> bytes:
        """Raises: DownloadError: the body ended early (or the caller cut the socket)."""
        data = resp.read(length)
        if len(data) != length:
            raise DownloadError(f"HTTP body ended after {len(data)} of {length} bytes")
        return data
