"""HTTP artifact sources that misbehave in time: drip the body, answer nothing, or answer
wrongly. Real servers on 127.0.0.1 (a stdlib ``ThreadingHTTPServer`` and a bare TCP listener)
that record each GET and notice when the client hangs up."""

from __future__ import annotations

import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SlowSource:
    """A real HTTP server on 127.0.0.1 that misbehaves as a test asks.

    ``drip_s``: send the body one byte per that many seconds. ``silent``: read the request,
    never answer. ``status`` / ``content_range`` / ``location``: answer with those. Records
    each GET and sets ``disconnected`` when a client went away mid-answer.
    """

    def __init__(
        self,
        body: bytes,
        *,
        honour_range: bool = True,
        drip_s: float | None = None,
        silent: bool = False,
        status: int | None = None,
        content_range: str | None = None,
        location: str | None = None,
    ) -> None:
        self.body = body
        self.gets: list[str] = []
        self.disconnected = threading.Event()
        self.closing = threading.Event()
        source = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return

            def do_GET(self) -> None:
                header = self.headers.get("Range") or ""
                source.gets.append(header)
                if silent:
                    source.hold(self.connection)
                    return
                if location is not None:
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload, code = body, 200
                if honour_range and header:
                    start, end = (int(v) for v in header.removeprefix("bytes=").split("-"))
                    payload, code = body[start : end + 1], 206
                    self.send_response(status or code)
                    self.send_header("Content-Range", content_range or f"bytes {start}-{end}/*")
                else:
                    self.send_response(status or code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if drip_s is None:
                    self.wfile.write(payload)
                    return
                source.drip(self.connection, payload, drip_s)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fetch-test-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, scheme: str = "http", path: str = "/a") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def client_gone(self, conn: socket.socket) -> bool:
        readable, _, _ = select.select([conn], [], [], 0)
        try:
            return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def hold(self, conn: socket.socket) -> None:
        while not self.closing.wait(0.02):
            if self.client_gone(conn):
                self.disconnected.set()
                return

    def drip(self, conn: socket.socket, payload: bytes, interval: float) -> None:
        for i in range(len(payload)):
            try:
                conn.sendall(payload[i : i + 1])
            except OSError:
                self.disconnected.set()
                return
            if self.closing.wait(interval):
                return
            if self.client_gone(conn):
                self.disconnected.set()
                return

    def __enter__(self) -> SlowSource:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class SilentTcp(SlowSource):
    """Accepts connections, reads nothing, answers nothing: for https, a TLS handshake that
    never gets its ServerHello."""

    def __init__(self) -> None:
        self.disconnected = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.thread = threading.Thread(target=self._accept, name="fetch-test-tcp", daemon=True)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                self.hold(conn)

    def client_gone(self, conn: socket.socket) -> bool:
        readable, _, _ = select.select([conn], [], [], 0)
        try:  # the ClientHello is readable too: drain it, EOF is what counts
            return bool(readable) and conn.recv(4096) == b""
        except OSError:
            return True

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.thread.join(5)
        self.listener.close()
