"""The local HTTP inference API: JSON and .npy/.npz forms, 4xx with reasons for bad input,
counted as client errors in telemetry."""

from __future__ import annotations

import http.client
import io
import json

import numpy as np
import pytest

from edgefleet.shared import EventType
from support.agent_harness import DEVICE, x_batch
from support.mqtt import wait_until


def request(
    agent,
    body: bytes,
    content_type: str = "application/json",
    path: str = "/v1/infer",
    method: str = "POST",
    headers=None,
):
    host, port = agent.http_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Type": content_type, **(headers or {})}
        )
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture
def agent(models, publisher, watcher, start_agent):
    agent = start_agent(max_request_bytes=4096)
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=[x_batch(1)], version="1.1.0"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    return agent


def test_no_model_is_503(start_agent, watcher):
    agent = start_agent()
    status, _, body = request(agent, json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode())
    assert status == 503
    assert "no model" in json.loads(body)["error"]


def test_json_inference(agent, models):
    x = x_batch(3, seed=1)["x"]
    status, headers, body = request(agent, json.dumps({"inputs": {"x": x.tolist()}}).encode())
    assert status == 200
    assert headers["X-Model-Version"] == "1.1.0"
    result = json.loads(body)
    assert result["version"] == "1.1.0"
    np.testing.assert_allclose(
        result["outputs"]["logits"], models.onnx_a.reference({"x": x})["logits"], rtol=1e-5
    )


def test_npy_and_npz_inference(agent, models):
    x = x_batch(2, seed=2)["x"]
    expected = models.onnx_a.reference({"x": x})["logits"]
    status, headers, body = request(agent, npy(x), "application/x-npy")
    assert status == 200
    assert headers["Content-Type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(body)), expected, rtol=1e-5)
    archive = io.BytesIO()
    np.savez(archive, x=x)
    status, headers, body = request(agent, archive.getvalue(), "application/x-npz")
    assert status == 200
    with np.load(io.BytesIO(body)) as out:
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (
            json.dumps({"inputs": {"y": [[1, 2, 3, 4]]}}).encode(),
            "application/json",
            400,
            "unknown input 'y'",
        ),
        (
            json.dumps({"inputs": {"x": [[1, 2, 3]]}}).encode(),
            "application/json",
            400,
            "shape [1, 3], expected ['?', 4]",
        ),
        (
            json.dumps({"inputs": {"x": [[1, 2], [3]]}}).encode(),
            "application/json",
            400,
            "not a rectangular array",
        ),
        (
            json.dumps({"inputs": {"x": [["a", "b", "c", "d"]]}}).encode(),
            "application/json",
            400,
            "expected numbers",
        ),
        (json.dumps({"inputs": {}}).encode(), "application/json", 400, "missing input 'x'"),
        (b"{not json", "application/json", 400, "not JSON"),
        (json.dumps([1, 2]).encode(), "application/json", 400, "must be a JSON object"),
        (
            npy(np.zeros((1, 4), np.float64)),
            "application/x-npy",
            400,
            "dtype float64, expected float32",
        ),
        (npy(np.zeros((1, 4, 1), np.float32)), "application/x-npy", 400, "shape [1, 4, 1]"),
        (b"\x93NUMPY garbage", "application/x-npy", 400, "not an .npy array"),
        (b"x" * 5000, "application/json", 413, "exceeds the limit of 4096"),
        (b"abc", "text/plain", 415, "unsupported Content-Type"),
    ],
)
def test_bad_input_is_a_4xx_with_reason(agent, body, content_type, status, reason):
    got, _, response = request(agent, body, content_type)
    assert got == status
    assert reason in json.loads(response)["error"]
    # the agent still serves good requests on a fresh connection
    ok, _, _ = request(agent, json.dumps({"inputs": {"x": [[0, 0, 0, 0]]}}).encode())
    assert ok == 200


def test_unknown_path_is_404_and_health_reports_the_model(agent):
    status, _, _ = request(agent, b"{}", path="/v2/other")
    assert status == 404

    def health() -> dict:
        status, _, body = request(agent, b"", path="/v1/health", method="GET")
        assert status == 200
        return json.loads(body)

    assert health()["model"]["version"] == "1.1.0"
    # the updater settles to "serving" just after it reports the swap
    wait_until(lambda: health()["status"] == "serving", timeout=10)


def test_client_errors_are_counted_apart_from_model_errors(agent, watcher):
    for _ in range(3):
        request(agent, json.dumps({"inputs": {"nope": [1]}}).encode())
    agent.infer(x_batch(1))
    request(agent, json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode())

    def totals():
        stats = [m for t in watcher.telemetry() for m in t.models if m.version == "1.1.0"]
        return (
            sum(m.client_errors for m in stats),
            sum(m.requests for m in stats),
            sum(m.errors for m in stats),
        )

    wait_until(lambda: totals()[0] >= 3 and totals()[1] >= 2, timeout=10)
    client_errors, requests, errors = totals()
    assert client_errors == 3
    assert requests == 2
    assert errors == 0
