"""Local inference over HTTP on 127.0.0.1: a stdlib HTTP/1.1 server, no web framework.

``POST /v1/infer`` takes ``application/json`` (``{"inputs": {"name": [[...]]}}``),
``application/x-npy`` (one array, for single-input models or ``?input=<name>``) or
``application/x-npz`` (named arrays) and answers in the same form. ``GET /v1/health`` reports
the active model. Every refused request is answered ``{"error": reason, "status": code}`` and
counts as a client error: 400 malformed or not matching the model's inputs, 405 another
method, 408 sent too slowly, 411 no Content-Length, 413 over a size limit (body, decoded
arrays, JSON values), 415 another Content-Type; 503 no model yet, or the server at capacity
(with Retry-After). Bodies are bounded before they are read (:mod:`edgefleet.agent.api_body`).
Concurrency: a fixed pool of named worker threads (:mod:`edgefleet.agent.api_server`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgefleet.agent.api_body import JSON, NPY, NPZ, BodyLimits, RequestRejectedError, decode_body
from edgefleet.agent.api_server import BoundedHTTPServer, RequestClock, ServerLimits, linger
from edgefleet.agent.errors import BadInputError, InferenceError, NoModelError
from edgefleet.agent.runtimes import Array

if TYPE_CHECKING:
    from edgefleet.agent.agent import Agent

log = logging.getLogger(__name__)

_BYTE_COUNT = re.compile(r"[0-9]{1,20}")


class _Server(BoundedHTTPServer):
    agent: Agent
    body_limits: BodyLimits


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # not 0.9: even a garbled request line gets headers
    server: _Server
    _clock: RequestClock
    _unread = False  # the connection closes with request bytes unread: linger first

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.settimeout(self.server.limits.read_timeout_s)  # bounds every write
        self.rfile.close()  # the plain socket file: every read goes through the deadline
        self.rfile, self._clock = self.server.open_reader(self.connection)

    def finish(self) -> None:
        if self._unread and not self._clock.timed_out:
            with contextlib.suppress(OSError):
                self.wfile.flush()
            linger(self.connection)
        super().finish()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except TimeoutError:
            self._timed_out()
            return
        except OSError as e:  # the client went away mid-request
            log.debug("http connection lost: %s", e)
            self.close_connection = True
            return
        if self._clock.timed_out:  # the request line timed out (caught by the base class)
            self._timed_out()
        self._clock.next_request()

    def _timed_out(self) -> None:
        self.close_connection = True
        if not (self._clock.timed_out and self._clock.reading):
            return  # an idle connection, or a client not reading its response: just close
        self.server.agent.record_client_error()
        with contextlib.suppress(OSError):  # the client may be gone too
            self._error(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request did not arrive within {self.server.limits.read_timeout_s:g} s",
            )

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class's protocol errors (bad request line, headers too long, unknown
        # method), answered like every other refusal: JSON, counted, connection closed.
        self.close_connection = True
        self._unread = True
        self.server.agent.record_client_error()
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code = HTTPStatus.METHOD_NOT_ALLOWED
            message = f"method {self.command!r} is not allowed: GET /v1/health, POST /v1/infer"
        status = HTTPStatus(code)
        self._error(status, message or status.phrase)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection or self.server.waiting:
            # others wait for a worker: this connection gives its worker up after the response
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, reason: str) -> None:
        body = json.dumps({"error": reason, "status": int(status)}).encode()
        self._send(status, body, JSON, {})

    def _refuse_unread(self, status: HTTPStatus, reason: str) -> None:
        """Answer a request whose body was not read: the connection cannot be reused."""
        self.server.agent.record_client_error()
        self.close_connection = self._unread = True
        self._error(status, reason)

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/v1/health":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r}")
            return
        model = self.server.agent.current_model
        body = {
            "device_id": self.server.agent.settings.device_id,
            "status": self.server.agent.updater.status.value,
            "model": model.info.model_dump(mode="json") if model else None,
        }
        self._send(HTTPStatus.OK, json.dumps(body).encode(), JSON, {})

    def handle_expect_100(self) -> bool:
        # Refuse a body that will not be accepted before the client sends it.
        if self.command == "POST" and self._content_length() is None:
            return False
        return super().handle_expect_100()

    def _content_length(self) -> int | None:
        """The body's declared length, or None once the request is answered with why not."""
        if "Transfer-Encoding" in self.headers:
            self._refuse_unread(
                HTTPStatus.LENGTH_REQUIRED,
                "a Content-Length header is required (Transfer-Encoding is not accepted)",
            )
            return None
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            self._refuse_unread(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        text = values.pop()
        if values or not _BYTE_COUNT.fullmatch(text):
            self._refuse_unread(HTTPStatus.BAD_REQUEST, "Content-Length is not one byte count")
            return None
        length, limit = int(text), self.server.body_limits.max_request_bytes
        if length > limit:
            self._refuse_unread(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes exceeds the limit of {limit}",
            )
            return None
        return length

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/v1/infer":
            self.close_connection = self._unread = True  # the body is not read
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path!r}")
            return
        length = self._content_length()
        if length is None:
            return
        body = self.rfile.read(length)  # within the request's read deadline (TimeoutError)
        if len(body) != length:
            self._refuse_unread(
                HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes"
            )
            return
        content_type = (self.headers.get("Content-Type") or JSON).split(";")[0].strip().lower()
        try:
            self._infer(content_type, body, parse_qs(url.query))
        except OSError:
            raise  # the connection failed, or the client does not read: nobody to answer
        except Exception:  # the request handler is a loop boundary: answer 500, log the bug
            log.exception("local inference request failed")
            self.close_connection = True
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the agent log)")

    def _infer(self, content_type: str, body: bytes, query: dict[str, list[str]]) -> None:
        agent = self.server.agent
        try:
            inputs = self._parse(content_type, body, query)
            outputs, info = agent.infer_with_info(inputs)
        except RequestRejectedError as e:  # counted as a client error where it was raised
            self._error(e.status, e.reason)
            return
        except BadInputError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
            return
        except NoModelError as e:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
            return
        except InferenceError as e:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))
            return
        headers = {"X-Model-Id": info.model_id, "X-Model-Version": info.version}
        self._respond(content_type, outputs, headers)

    def _parse(self, content_type: str, body: bytes, query: dict[str, list[str]]) -> dict[str, Any]:
        agent = self.server.agent
        model = agent.current_model
        if model is None:
            raise NoModelError("no model is active")
        try:
            return decode_body(
                content_type,
                body,
                model.signature,
                self.server.body_limits,
                npy_inputs=query.get("input", ()),
            )
        except BadInputError:
            agent.record_client_error()
            raise

    def _respond(
        self, content_type: str, outputs: dict[str, Array], headers: dict[str, str]
    ) -> None:
        if content_type == NPY and len(outputs) == 1:
            buffer = io.BytesIO()
            np.save(buffer, next(iter(outputs.values())), allow_pickle=False)
            self._send(HTTPStatus.OK, buffer.getvalue(), NPY, headers)
        elif content_type in (NPY, NPZ):
            buffer = io.BytesIO()
            np.savez(buffer, **outputs)  # type: ignore[arg-type]
            self._send(HTTPStatus.OK, buffer.getvalue(), NPZ, headers)
        else:
            body = {
                "model_id": headers["X-Model-Id"],
                "version": headers["X-Model-Version"],
                "outputs": {name: value.tolist() for name, value in outputs.items()},
            }
            self._send(HTTPStatus.OK, json.dumps(body).encode(), JSON, headers)


class InferenceServer:
    """The local inference API: its accept thread and its pool of worker threads."""

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        settings = agent.settings
        limits = ServerLimits(
            workers=settings.http_workers,
            queue_size=settings.http_queue_size,
            read_timeout_s=settings.http_read_timeout_s,
            idle_timeout_s=settings.http_idle_timeout_s,
        )
        self._server = _Server(address, _Handler, limits, name="edgefleet-agent-http")
        self._server.agent = agent
        self._server.body_limits = BodyLimits(
            max_request_bytes=settings.max_request_bytes,
            max_input_bytes=settings.max_input_bytes,
            max_json_values=settings.max_json_values,
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._server.start_workers()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="edgefleet-agent-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        # shutdown() waits for the accept loop to say it ended: forever when it is not running
        # (an agent seen in CI hung so, stopping with no accept thread left)
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._server.stop_workers()
        if self._thread is not None:
            self._thread.join(5.0)
