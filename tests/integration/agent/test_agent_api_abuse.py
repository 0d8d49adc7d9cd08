"""The local inference API against broken or hostile local clients: decompression bombs, huge
JSON, huge .npy headers, slowloris connections, protocol abuse. A real agent with a real model
answers each with a 4xx and a reason, in bounded memory and time, and keeps serving others.

Memory is the agent *process's* peak RSS growth (``VmHWM`` after resetting it through
``/proc/PID/clear_refs``), measured on an agent daemon started fresh for the test, so memory
an earlier request freed (but glibc kept) cannot hide an allocation.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefleet.shared import EventType
from support.agent_harness import DEVICE, AgentProcess, settings_dict, write_toml, x_batch
from support.mosquitto import free_port
from support.mqtt import wait_until

MIB = 1024 * 1024
GOOD = json.dumps({"inputs": {"x": [[0.5, 1, 2, 3]]}}).encode()


def post(port: int, body: bytes, content_type: str, timeout: float = 30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def npy_header(shape, descr: str = "<f4", version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy header as np.save writes it, for any shape (even one numpy would refuse)."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    size_format, prefix = ("<H", 10) if version[0] == 1 else ("<I", 12)
    text += " " * (63 - (prefix + len(text)) % 64) + "\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size_format, len(text)) + text.encode()


def npz_bomb(inflated_mib: int) -> bytes:
    """A valid .npz whose one deflated member, a float32 [N, 4] of zeros, inflates to
    ``inflated_mib`` MiB and a header, from about 1 KiB per MiB.

    Built by hand (as zipfile would write it) so the test need not deflate a GiB: after a full
    flush deflate starts afresh, so every MiB of zeros compresses to the same bytes.
    """
    header = npy_header((inflated_mib * MIB // 16, 4))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = deflate.compress(bytes(MIB)) + deflate.flush(zlib.Z_FULL_FLUSH)
    data = head + zeros * inflated_mib + deflate.flush()
    crc = zlib.crc32(header)
    for _ in range(inflated_mib):
        crc = zlib.crc32(bytes(MIB), crc)
    size = len(header) + inflated_mib * MIB
    name = b"x.npy"
    common = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, crc, len(data), size)
    local = b"PK\x03\x04" + common + struct.pack("<HH", len(name), 0) + name
    central = (
        b"PK\x01\x02"
        + struct.pack("<H", 20)
        + common
        + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0)
        + name
    )
    end = b"PK\x05\x06" + struct.pack(
        "<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(data), 0
    )
    return local + data + central + end


def json_rows(rows: int, cell: bytes = b"0.123456789") -> bytes:
    row = b"[" + b",".join([cell] * 4) + b"]"
    return b'{"inputs": {"x": [' + b",".join([row] * rows) + b"]}}"


# -- a fresh agent daemon, its peak RSS ------------------------------------------------------


@dataclass
class Daemon:
    process: AgentProcess
    port: int

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def _status_mib(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def reset_peak(self) -> float:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        return self._status_mib("VmRSS")

    def peak_growth_mib(self, base: float) -> float:
        return self._status_mib("VmHWM") - base


@pytest.fixture
def daemon(tmp_path, mosquitto, topics, signing, publisher, watcher, models):
    """An agent daemon with the default request limits, serving the [N, 4] classifier."""
    port = free_port()
    values = settings_dict(
        device_id=DEVICE,
        broker_url=mosquitto.url,
        topics=topics,
        key_path=signing[1],
        data_dir=tmp_path / "agent-data",
        http_bind=f"127.0.0.1:{port}",
    )
    process = AgentProcess(write_toml(tmp_path / "agent.toml", values), tmp_path / "agent.log")
    process.start()
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=[x_batch(1)]
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED, timeout=60)
    assert post(port, GOOD, "application/json")[0] == 200  # warm: the first request allocates
    yield Daemon(process, port)
    process.kill()


def measured(daemon: Daemon, body: bytes, content_type: str):
    base = daemon.reset_peak()
    start = time.perf_counter()
    status, _, response = post(daemon.port, body, content_type)
    seconds = time.perf_counter() - start
    growth = daemon.peak_growth_mib(base)
    print(f"{len(body) / MIB:.2f} MiB body -> {status} in {seconds:.3f} s, +{growth:.1f} MiB peak")
    return status, response, growth, seconds


def test_npz_bomb_is_refused_before_it_inflates(daemon):
    bomb = npz_bomb(1024)
    assert len(bomb) < 1.1 * MIB
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:  # a real archive: numpy would inflate it
        assert archive.infolist()[0].file_size == 1024 * MIB + 128
    status, response, growth, seconds = measured(daemon, bomb, "application/x-npz")
    assert status == 413
    reason = json.loads(response)["error"]
    assert "archive inflates to 1073741952 bytes" in reason
    assert "limit of 16777216" in reason
    assert growth < 16  # was +2.6 GiB and a 200 after 9 s
    assert seconds < 2
    assert post(daemon.port, GOOD, "application/json")[0] == 200


def test_json_array_of_16_mib_is_refused_unparsed(daemon):
    body = b'{"inputs": {"x": [' + b"0," * (8 * MIB - 32) + b"0]}}"
    assert 15.9 * MIB < len(body) < 16 * MIB
    status, response, growth, _ = measured(daemon, body, "application/json")
    assert status == 413
    assert "exceeds the limit of 500000" in json.loads(response)["error"]
    assert growth < 32  # the body itself (16 MiB) and nothing parsed; was +159 MiB
    assert post(daemon.port, GOOD, "application/json")[0] == 200


def test_json_within_the_limits_is_answered_in_bounded_memory(daemon, models):
    rows = 99_000  # 5 values a row: just under the 500000 values a JSON body may hold
    body = json_rows(rows)
    status, response, growth, _ = measured(daemon, body, "application/json")
    assert status == 200
    logits = np.asarray(json.loads(response)["outputs"]["logits"], np.float32)
    x = np.full((rows, 4), 0.123456789, np.float32)
    np.testing.assert_allclose(logits, models.onnx_a.reference({"x": x})["logits"], rtol=1e-5)
    assert growth < 64  # parsing, arrays and the JSON answer; 16 MiB of rows cost +568 MiB


def test_json_string_in_place_of_numbers_is_refused_before_numpy_sees_it(daemon):
    body = b'{"inputs": {"x": [["' + b"a" * (16 * MIB - 64) + b'"]]}}'
    status, response, growth, _ = measured(daemon, body, "application/json")
    assert status == 400
    assert "holds str values, expected numbers" in json.loads(response)["error"]
    assert growth < 64  # body, its text, the parsed string; numpy would add 4 bytes a char


# -- an in-process agent with small pool and timeouts ----------------------------------------

WORKERS = 2
TIMEOUT_S = 1.0


@pytest.fixture
def agent(models, publisher, watcher, start_agent):
    agent = start_agent(
        max_request_bytes=64 * 1024,
        http_workers=WORKERS,
        http_queue_size=8,
        http_read_timeout_s=TIMEOUT_S,
        http_idle_timeout_s=TIMEOUT_S,
    )
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=[x_batch(1)]
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    return agent


def port_of(agent) -> int:
    return agent.http_address[1]


def raw_exchange(agent, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port_of(agent)), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def trickle(sock: socket.socket, data: bytes, gap_s: float) -> int:
    """Send ``data`` a byte at a time; how many bytes went before the server closed."""
    for sent in range(len(data)):
        try:
            sock.sendall(data[sent : sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            return sent
        time.sleep(gap_s)
    return len(data)


def status_and_reason(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (npy_header((2**40, 2**40)), 413, "declares shape [1099511627776, 1099511627776]"),
        (npy_header((2**62, 2**62, 2**62)), 413, "over the limit of 16777216"),
        (npy_header((2**31, 4)) + bytes(64), 413, "over the limit"),
        (npy_header((-1, 4)) + bytes(64), 400, "negative dimension"),
        (npy_header((1, 4), "|O") + b"\x80\x04N.", 400, "Python objects (a pickle)"),
        (npy_header((1, 4), version=(3, 0)) + bytes(16), 400, "version 3.0"),
        (npy_header((4, 4)) + bytes(16), 400, "holds 16 bytes of array data"),
        (npy_header((1, 4), "<U4") + bytes(64), 400, "the API takes numeric arrays"),
    ],
)
def test_npy_header_shapes_and_dtypes_are_checked_before_allocating(agent, body, status, reason):
    got, _, response = post(port_of(agent), body, "application/x-npy")
    assert got == status
    assert reason in json.loads(response)["error"]
    assert post(port_of(agent), GOOD, "application/json")[0] == 200


@pytest.mark.parametrize("depth", [33, 5000, 30000])
def test_deep_json_is_refused_not_a_dropped_connection(agent, depth):
    body = b'{"inputs": {"x": ' + b"[" * depth + b"1" + b"]" * depth + b"}}"
    status, _, response = post(port_of(agent), body, "application/json")
    assert status == 400  # was a dropped connection (RecursionError in the handler thread)
    assert "nests deeper than 32 levels" in json.loads(response)["error"]


def test_slowloris_connections_neither_exhaust_the_pool_nor_stay_open(agent):
    port = port_of(agent)
    request_head = (
        b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
    )
    slow: list[socket.socket] = []
    for kind in ("half-headers", "half-body", "idle", "half-headers"):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if kind == "half-headers":
            sock.sendall(request_head[:30])
        elif kind == "half-body":
            sock.sendall(request_head + GOOD[:5])
        slow.append(sock)
    assert len(slow) > WORKERS  # accepted in order, ahead of the well-behaved one

    start = time.monotonic()
    status, _, body = post(port, GOOD, "application/json", timeout=10)
    answered_in = time.monotonic() - start
    assert status == 200
    assert json.loads(body)["outputs"]["logits"]
    # two workers, each held one read timeout by a slow client, then the good request
    assert answered_in < 2 * TIMEOUT_S + 1.5

    for index, sock in enumerate(slow):
        response = read_until_closed(sock)  # the server closes it; recv timeout is 10 s
        closed_at = time.monotonic() - start
        assert closed_at < 3 * TIMEOUT_S + 2, f"slow socket {index} still open"
        if index != 2:  # a request had begun: it is told why
            assert status_and_reason(response) == (408, "the request did not arrive within 1 s")
        else:
            assert response == b""  # an idle connection is closed without a word
        sock.close()
    assert post(port, GOOD, "application/json")[0] == 200


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_read_timeout(agent):
    head = b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n" + b"X-Pad: y\r\n" * 50
    with socket.create_connection(("127.0.0.1", port_of(agent)), timeout=10) as sock:
        start = time.monotonic()
        sent = trickle(sock, head, gap_s=0.05)  # well under the 1 s timeout between bytes
        cut_after = time.monotonic() - start
    assert TIMEOUT_S - 0.1 < cut_after < TIMEOUT_S + 1.5
    assert sent < len(head)


def test_keep_alive_connection_is_closed_when_idle(agent):
    conn = http.client.HTTPConnection("127.0.0.1", port_of(agent), timeout=10)
    conn.request("POST", "/v1/infer", body=GOOD, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Connection") != "close"
    response.read()
    sock = conn.sock
    start = time.monotonic()
    assert sock.recv(1) == b""  # the server closed the idle connection
    assert TIMEOUT_S - 0.1 < time.monotonic() - start < TIMEOUT_S + 1.0
    conn.close()


def test_over_capacity_is_503_with_retry_after_at_once(models, publisher, watcher, start_agent):
    agent = start_agent(
        http_workers=1, http_queue_size=1, http_read_timeout_s=3.0, http_idle_timeout_s=3.0
    )
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=[x_batch(1)]
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    port = port_of(agent)
    held: list[socket.socket] = []
    refused = b""
    for _ in range(3):  # one worker and one queue place: the third is refused, if not before
        sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\n")  # and nothing more
        try:
            refused = read_until_closed(sock)
        except TimeoutError:
            held.append(sock)  # in the worker or in the queue: no answer for 3 s
            continue
        sock.close()
        break
    assert refused, "the server took more connections than its worker and queue"
    assert status_and_reason(refused)[0] == 503
    assert "at capacity" in status_and_reason(refused)[1]
    assert b"\r\nRetry-After: 1\r\n" in refused
    for sock in held:
        sock.close()
    wait_until(lambda: post(port, GOOD, "application/json")[0] == 200, timeout=10)


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n",
            411,
            "Content-Length header is required",
        ),
        (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            411,
            "Transfer-Encoding is not accepted",
        ),
        (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            400,
            "Content-Length is not one byte count",
        ),
        (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n"
            b"\r\nabcd",
            400,
            "Content-Length is not one byte count",
        ),
        (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
            b"Expect: 100-continue\r\n\r\n",
            413,
            "body of 99999999 bytes exceeds the limit of 65536",
        ),
        (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            400,
            "body ended after 3 of 10 bytes",
        ),
        (b"PUT /v1/infer HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method 'PUT' is not allowed"),
        (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "Request-URI Too Long"),
    ],
)
def test_protocol_abuse_is_a_4xx_with_a_json_reason(agent, request_bytes, status, reason):
    if b"abc" in request_bytes and b"Content-Length: 10" in request_bytes:
        with socket.create_connection(("127.0.0.1", port_of(agent)), timeout=5) as sock:
            sock.sendall(request_bytes)
            sock.shutdown(socket.SHUT_WR)  # the body ends early
            response = read_until_closed(sock)
    else:
        response = raw_exchange(agent, request_bytes)
    assert status_and_reason(response)[0] == status
    assert reason in status_and_reason(response)[1]
    assert post(port_of(agent), GOOD, "application/json")[0] == 200


def test_refusals_count_as_client_errors(agent, watcher):
    post(port_of(agent), npy_header((2**40, 4)), "application/x-npy")  # 413
    raw_exchange(agent, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n\r\n")  # 411
    with socket.create_connection(("127.0.0.1", port_of(agent)), timeout=10) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\n")  # 408 after the read timeout
        read_until_closed(sock)
    assert post(port_of(agent), GOOD, "application/json")[0] == 200

    def totals() -> tuple[int, int]:
        stats = [m for t in watcher.telemetry() for m in t.models]
        return sum(m.client_errors for m in stats), sum(m.requests for m in stats)

    wait_until(lambda: totals() == (3, 1), timeout=10)
