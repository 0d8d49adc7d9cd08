"""A TCP forwarder on a free loopback port, for tests that cut a network path and restore it.

Clients connect to :attr:`TcpProxy.port`; each connection is forwarded to the target by one
named thread (at most ``max_connections`` at once, further ones are closed on accept).
:meth:`TcpProxy.cut` closes every forwarded connection and closes new ones on accept until
:meth:`TcpProxy.restore`: both ends see the path go down, as a partition that resets
connections would show it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

BUFFER = 64 * 1024


class _Pipe:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Shut both sockets down (which wakes a thread blocked on them), then close them."""
        self._closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forward ``127.0.0.1:<free port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, max_connections: int = 32) -> None:
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.host = "127.0.0.1"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: dict[_Pipe, threading.Thread] = {}
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._acceptor: threading.Thread | None = None
        self.accepted = 0  # connections forwarded so far
        self.refused = 0  # connections closed on accept (cut, or too many)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        with self._lock:
            return sum(1 for pipe in self._pipes if not pipe.closed)

    def start(self) -> TcpProxy:
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._acceptor = threading.Thread(
            target=self._accept, name=f"tcp-proxy-{self.port}-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def cut(self) -> None:
        """Close every forwarded connection, and every new one until :meth:`restore`."""
        self._cut.set()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.close()

    def restore(self) -> None:
        """Forward new connections again."""
        self._cut.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and join every thread."""
        self._stop.set()
        self.cut()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            threads = list(self._pipes.values())
        for thread in threads:
            thread.join(timeout)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            if self._cut.is_set() or self.connections >= self.max_connections:
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self.refused += 1
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, upstream)
            thread = threading.Thread(
                target=self._forward,
                args=(pipe,),
                name=f"tcp-proxy-{self.port}-pipe-{self.accepted}",
                daemon=True,
            )
            with self._lock:
                self._pipes = {p: t for p, t in self._pipes.items() if t.is_alive()}
                self._pipes[pipe] = thread
            self.accepted += 1
            thread.start()

    def _forward(self, pipe: _Pipe) -> None:
        peers = {pipe.client: pipe.upstream, pipe.upstream: pipe.client}
        with selectors.DefaultSelector() as selector:
            try:
                for sock in peers:
                    selector.register(sock, selectors.EVENT_READ)
                while not pipe.closed:
                    for key, _ in selector.select(timeout=0.2):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = source.recv(BUFFER)
                        if not data:
                            return
                        peers[source].sendall(data)
            except (OSError, ValueError):
                return  # closed by cut() or by either end
            finally:
                pipe.close()
