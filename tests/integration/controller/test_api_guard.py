"""The controller's HTTP guard against a running ``edgefleet controller serve`` (uvicorn, real
mosquitto): bodies over the limit get 413 before they are read, the token is checked before the
body, only known ``Host`` names are served, the login form and its cookie, an access log without
the token, and a data dir nobody else can read whatever the umask."""

from __future__ import annotations

import os
import re
import select
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from support.fleet import ControllerProcess
from support.mosquitto import MosquittoBroker
from support.mqtt import wait_until

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024  # the default http_max_body_bytes
BIG = 64 * 1024 * 1024
TOKEN = f"guard-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def controller(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoBroker
) -> Iterator[ControllerProcess]:
    """One controller on loopback for the module's tests (they change no state)."""
    data = tmp_path_factory.mktemp("guarded")
    root = f"edgefleet-guard/{uuid.uuid4().hex[:8]}/v1"
    process = ControllerProcess(
        data, broker_url=mosquitto.url, topic_root=root, extra_env={"EDGEFLEET_API_TOKEN": TOKEN}
    )
    process.token = TOKEN
    process.start()
    yield process
    process.stop()


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client had sent when the answer came


def raw_request(port: int, head: str, body: Iterable[bytes] = (), timeout: float = 20) -> RawReply:
    """Send ``head``, then ``body`` chunk by chunk until the server answers (or hangs up), and
    read the answer. ``sent`` tells how much of the body went out before it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        sent = 0
        for chunk in body:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return _read_reply(sock, sent)


def _read_reply(sock: socket.socket, sent: int) -> RawReply:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"the server hung up without an answer (got {data!r})"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {key.lower(): value for key, value in headers.items()}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        assert more, "the server hung up in the middle of its answer"
        body += more
    return RawReply(int(lines[0].split()[1]), headers, body[:length], sent)


def post_head(port: int, *, token: str | None, length: int | None, host: str = "") -> str:
    lines = ["POST /api/rollouts HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append("Content-Type: application/json")
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return "\r\n".join(lines) + "\r\n\r\n"


def chunks(total: int, size: int = 64 * 1024, *, chunked: bool = False) -> Iterator[bytes]:
    piece = b"x" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + piece + b"\r\n" if chunked else piece


def rss(controller: ControllerProcess) -> int:
    assert controller.proc is not None
    return int(psutil.Process(controller.proc.pid).memory_info().rss)


def error_of(reply: RawReply | httpx.Response) -> tuple[str, str]:
    import json

    body = json.loads(reply.body if isinstance(reply, RawReply) else reply.content)
    return body["error"], body["detail"]


# --- body size ---------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_gets_413_before_a_byte_of_body(controller):
    reply = raw_request(controller.port, post_head(controller.port, token=TOKEN, length=LIMIT + 1))
    assert reply.status == 413
    assert reply.headers["connection"] == "close"
    assert error_of(reply) == (
        "BodyTooLargeError",
        f"request body over the limit of {LIMIT} bytes (Content-Length {LIMIT + 1})",
    )


def test_64_mib_bodies_get_413_and_the_controller_does_not_grow(controller, capsys):
    controller.api("GET", "/api/health")  # warm: first requests allocate for good
    before = rss(controller)
    declared = raw_request(
        controller.port, post_head(controller.port, token=TOKEN, length=BIG), chunks(BIG)
    )
    assert declared.status == 413
    assert declared.sent < BIG  # answered and hung up long before the body was through
    streamed = raw_request(
        controller.port,
        post_head(controller.port, token=TOKEN, length=None),
        chunks(BIG, chunked=True),
    )
    assert streamed.status == 413, streamed
    assert error_of(streamed) == (
        "BodyTooLargeError",
        f"request body over the limit of {LIMIT} bytes",
    )
    assert LIMIT < streamed.sent < BIG  # counted while streaming, stopped past the limit
    growth = rss(controller) - before
    with capsys.disabled():
        print(
            f"\ncontroller RSS growth over two 64 MiB bodies: {growth / 2**20:.1f} MiB "
            f"(client got the 413 after {declared.sent / 2**20:.1f} / "
            f"{streamed.sent / 2**20:.1f} MiB sent)"
        )
    assert growth < 16 * 2**20
    # The controller still serves, and a body under the limit is read as usual.
    ok = controller.api("POST", "/api/rollouts", json={"model": "nope", "version": "1"})
    assert ok.status_code == 404, ok.text


# --- the token before the body -----------------------------------------------------------------


def test_the_token_is_checked_before_the_body_is_read(controller):
    port = controller.port
    # A wrong token with a huge declared body: 403, not 413 (and no body read to say so).
    wrong = raw_request(port, post_head(port, token="not-it", length=BIG))
    assert wrong.status == 403
    assert error_of(wrong) == ("TokenWrongError", "wrong API token")
    # No token, 1000 bytes declared, 10 sent: the answer comes without waiting for the rest.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post_head(port, token=None, length=1000).encode() + b"x" * 10)
        missing = _read_reply(sock, 10)
    assert missing.status == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert error_of(missing)[0] == "TokenMissingError"
    # Streamed without a token: 401 before a chunk.
    streamed = raw_request(
        port, post_head(port, token=None, length=None), chunks(BIG, chunked=True)
    )
    assert streamed.status == 401
    assert streamed.sent < BIG
    # A complete body that does not parse: 401/403 without the token, 422 only with it.
    url = f"{controller.url}/api/rollouts"
    junk = b"{not json"
    json_type = {"Content-Type": "application/json"}
    assert httpx.post(url, content=junk, headers=json_type, timeout=10).status_code == 401
    wrong_token = {**json_type, "Authorization": "Bearer x"}
    assert httpx.post(url, content=junk, headers=wrong_token, timeout=10).status_code == 403
    parsed = controller.api("POST", "/api/rollouts", content=junk, headers=json_type)
    assert parsed.status_code == 422, parsed.text


# --- Host names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io", "[::2]"]
)
def test_unknown_host_names_get_421_with_the_reason(controller, host):
    host = host.format(port=controller.port)
    read = httpx.get(f"{controller.url}/api/devices", headers={"Host": host}, timeout=10)
    assert read.status_code == 421
    name, detail = error_of(read)
    assert name == "HostNotAllowedError"
    assert f"does not serve {host!r}" in detail
    assert "127.0.0.1, localhost, [::1]" in detail
    write = controller.api("POST", "/api/rollouts", json={}, headers={"Host": host})
    assert write.status_code == 421


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LocalHost.", "[::1]:{port}"]
)
def test_loopback_host_names_are_served(controller, host):
    headers = {"Host": host.format(port=controller.port)}
    assert (
        httpx.get(f"{controller.url}/api/devices", headers=headers, timeout=10).status_code == 200
    )


def test_a_request_without_host_gets_421(controller):
    with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
        sock.sendall(b"GET /api/devices HTTP/1.0\r\n\r\n")
        reply = _read_reply(sock, 0)
    assert reply.status == 421
    assert "no Host header" in error_of(reply)[1]


# --- login on loopback -------------------------------------------------------------------------


def test_the_login_form_posts_the_token_and_sets_a_derived_cookie(controller):
    form = httpx.get(f"{controller.url}/login", timeout=10)
    assert form.status_code == 200
    assert form.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login"' in form.text
    assert 'name="token" type="password"' in form.text
    signed_in = httpx.post(f"{controller.url}/login", data={"token": TOKEN}, timeout=10)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/dashboard"
    cookie = signed_in.headers["set-cookie"]
    value = re.match(r"edgefleet_session=([^;]+);", cookie)
    assert value is not None, cookie
    assert TOKEN not in cookie
    assert re.fullmatch(r"[0-9]+\.[0-9a-f]{64}", value.group(1))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # loopback over plain HTTP: a Secure cookie would be dropped


def test_wrong_or_misplaced_tokens_do_not_sign_in(controller):
    url = f"{controller.url}/login"
    wrong = httpx.post(url, data={"token": "nope"}, timeout=10)
    assert wrong.status_code == 403
    assert "set-cookie" not in wrong.headers
    page = httpx.post(url, data={"token": "nope"}, headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 403
    assert "Wrong API token." in page.text
    assert httpx.post(url, json={"token": TOKEN}, timeout=10).status_code == 415
    assert httpx.post(url, data={"other": "x"}, timeout=10).status_code == 422
    in_url = httpx.get(url, params={"token": TOKEN}, timeout=10)
    assert in_url.status_code == 200
    assert "set-cookie" not in in_url.headers
    assert "token in the URL was ignored" in in_url.text
    query_only = httpx.post(url, params={"token": TOKEN}, data={"other": "x"}, timeout=10)
    assert query_only.status_code == 422  # a token in the query string counts for nothing


def test_the_token_never_reaches_the_access_log(controller):
    httpx.get(f"{controller.url}/login", params={"token": TOKEN}, timeout=10)
    httpx.get(f"{controller.url}/api/devices", params={"access_token": TOKEN}, timeout=10)
    httpx.post(f"{controller.url}/login", data={"token": TOKEN}, timeout=10)
    controller.api("GET", "/api/rollouts")
    log = controller.log()
    assert "GET /login?token=[redacted] HTTP/1.1" in log
    assert "GET /api/devices?access_token=[redacted] HTTP/1.1" in log
    assert TOKEN not in log


# --- private files -----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_data_dir_and_database_are_private_whatever_the_umask(tmp_path, mosquitto, umask):
    data = tmp_path / "fresh" / "controller"  # neither exists yet: the controller makes both
    process = ControllerProcess(
        tmp_path, broker_url=mosquitto.url, topic_root=f"edgefleet-modes/{uuid.uuid4().hex[:8]}/v1"
    )
    process.env["EDGEFLEET_DATA_DIR"] = str(data)
    del process.env["EDGEFLEET_API_TOKEN"]  # so it writes its own token file
    previous = os.umask(umask)  # the child inherits it
    try:
        process.start()
    finally:
        os.umask(previous)
    try:
        process.token = (data / "api-token").read_text().strip()
        assert (
            process.api("POST", "/api/rollouts", json={"model": "x", "version": "1"}).status_code
            == 404
        )
        assert mode(data) == 0o700
        for name in ("controller.db", "controller.db-wal", "controller.db-shm", "api-token"):
            assert mode(data / name) == 0o600, name
        assert mode(data / "keys") == 0o700
        for name in ("signing.key", "artifact-url.key"):
            assert mode(data / "keys" / name) == 0o600, name
        assert mode(data.parent) & 0o022 == 0  # a parent it made is nobody else's to fill
    finally:
        process.stop()


# --- serve's flags -----------------------------------------------------------------------------


def test_serve_flags_set_the_host_names_and_the_body_limit(tmp_path, mosquitto):
    process = ControllerProcess(
        tmp_path, broker_url=mosquitto.url, topic_root=f"edgefleet-flags/{uuid.uuid4().hex[:8]}/v1"
    )
    command = [sys.executable, "-m", "edgefleet.controller.cli", "controller", "serve",
               "--allowed-host", "ctl.test", "--allowed-host", "*.fleet.test:8443",
               "--max-body-bytes", "2048"]  # fmt: skip
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(command, env=process.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _healthy(process.url), timeout=60, interval=0.2)
        for host, status in (
            ("ctl.test", 200),
            ("eu.fleet.test:8443", 200),
            ("eu.fleet.test", 421),
        ):
            reply = httpx.get(f"{process.url}/api/devices", headers={"Host": host}, timeout=10)
            assert reply.status_code == status, host
        big = process.api("POST", "/api/rollouts", content=b"x" * 2049)
        assert big.status_code == 413
        assert "limit of 2048 bytes" in big.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(20)


def _healthy(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/api/health", timeout=1).json().get("broker_connected"))
    except (httpx.HTTPError, ValueError):
        return False


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--allowed-host", "not a host"], "'not a host' is not a host name"),
        (["--max-body-bytes", "10"], "http_max_body_bytes"),
    ],
)
def test_serve_refuses_bad_flags_with_the_reason(tmp_path, monkeypatch, args, reason):
    from typer.testing import CliRunner

    from edgefleet.controller.cli import app

    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["controller", "serve", *args])
    assert result.exit_code == 2
    assert reason in result.output
    assert not (tmp_path / "controller.db").exists()  # refused before anything started
