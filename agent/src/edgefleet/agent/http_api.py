"""Local inference over HTTP on 127.0.0.1: a stdlib threading server, no web framework.

``POST /v1/infer`` takes ``application/json`` (``{"inputs": {"name": [[...]]}}``),
``application/x-npy`` (one array, for single-input models or ``?input=<name>``) or
``application/x-npz`` (named arrays) and answers in the same form. ``GET /v1/health`` reports
the active model. Bad input is a 4xx with the reason and counts as a client error.
Concurrency: one named thread accepts, one named thread serves each connection.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgefleet.agent.errors import BadInputError, InferenceError, NoModelError
from edgefleet.agent.inputs import arrays_from_json
from edgefleet.agent.runtimes import Array

if TYPE_CHECKING:
    from edgefleet.agent.agent import Agent

log = logging.getLogger(__name__)

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    agent: Agent
    _counter = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's threads are anonymous; name them so a thread dump explains itself.
        self._counter += 1
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"edgefleet-agent-http-{self._counter}",
            daemon=True,
        )
        thread.start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, reason: str) -> None:
        body = json.dumps({"error": reason, "status": int(status)}).encode()
        self._send(status, body, JSON, {})

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

    def do_POST(self) -> None:
        agent = self.server.agent
        url = urlsplit(self.path)
        if url.path != "/v1/infer":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path!r}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            agent.record_client_error()
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return
        if length < 0 or length > agent.settings.max_request_bytes:
            agent.record_client_error()
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes exceeds the limit of {agent.settings.max_request_bytes}",
            )
            return
        body = self.rfile.read(length)
        content_type = (self.headers.get("Content-Type") or JSON).split(";")[0].strip().lower()
        try:
            inputs = self._parse(content_type, body, parse_qs(url.query))
            outputs, info = agent.infer_with_info(inputs)
        except BadInputError as e:  # counted as a client error where it was raised
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
            if content_type == JSON:
                try:
                    payload = json.loads(body)
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise BadInputError(f"body is not JSON: {e}") from e
                return arrays_from_json(model.signature, payload)
            if content_type == NPY:
                names = query.get("input") or [s.name for s in model.signature.inputs]
                if len(names) != 1:
                    raise BadInputError("x-npy carries one array: add ?input=<name>")
                return {names[0]: _load_array(body)}
            if content_type == NPZ:
                try:
                    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
                        return {name: archive[name] for name in archive.files}
                except (ValueError, OSError, EOFError) as e:
                    raise BadInputError(f"body is not an .npz archive: {e}") from e
            raise BadInputError(
                f"unsupported Content-Type {content_type!r}; use {JSON}, {NPY} or {NPZ}"
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


def _load_array(body: bytes) -> Array:
    try:
        array: Array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadInputError(f"body is not an .npy array: {e}") from e
    if not isinstance(array, np.ndarray):
        raise BadInputError("body is not a single .npy array")
    return array


class InferenceServer:
    """The local inference API on its own named thread."""

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self._server = _Server(address, _Handler)
        self._server.agent = agent
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="edgefleet-agent-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
