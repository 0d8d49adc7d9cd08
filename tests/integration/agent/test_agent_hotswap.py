"""Zero failed requests across hot swaps, in-process and over HTTP, under concurrent load."""

from __future__ import annotations

import http.client
import json
import threading

import numpy as np

from edgefleet.shared import EventType
from support.agent_harness import DEVICE, x_batch

SWAPS = 8


def test_no_request_fails_or_mixes_models_across_swaps(models, publisher, watcher, start_agent):
    agent = start_agent()
    golden = [x_batch(1, seed=i) for i in range(2)]
    manifests = {name: model for name, model in (("a", models.onnx_a), ("b", models.onnx_b))}
    serial = 1
    publisher.publish_desired(
        DEVICE,
        publisher.sign(
            publisher.manifest(
                models.onnx_a, device_id=DEVICE, serial=serial, golden_inputs=golden, version="a"
            )
        ),
    )
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == serial)

    stop = threading.Event()
    failures: list[str] = []
    seen_versions: set[str] = set()
    counts = {"inproc": 0, "http": 0}
    x = x_batch(4, seed=77)["x"]
    expected = {name: model.reference({"x": x})["logits"] for name, model in manifests.items()}

    def check(version: str, logits) -> None:
        # an answer must come wholly from the version that claims it
        if not np.allclose(logits, expected[version], rtol=1e-5):
            failures.append(f"output of version {version} does not match that model")
        seen_versions.add(version)

    def inproc() -> None:
        while not stop.is_set():
            try:
                out, info = agent.infer_with_info({"x": x})
                check(info.version, out["logits"])
                counts["inproc"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is what this test counts
                failures.append(f"in-process: {e!r}")

    def over_http() -> None:
        host, port = agent.http_address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
        while not stop.is_set():
            try:
                conn.request(
                    "POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                payload = json.loads(response.read())
                if response.status != 200:
                    failures.append(f"http {response.status}: {payload}")
                    continue
                check(payload["version"], np.array(payload["outputs"]["logits"], np.float32))
                counts["http"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is what this test counts
                failures.append(f"http: {e!r}")
        conn.close()

    threads = [
        threading.Thread(target=inproc, name="load-inproc-1"),
        threading.Thread(target=inproc, name="load-inproc-2"),
        threading.Thread(target=over_http, name="load-http"),
    ]
    for t in threads:
        t.start()
    try:
        for i in range(SWAPS):
            serial += 1
            name = "b" if i % 2 == 0 else "a"
            manifest = publisher.manifest(
                manifests[name], device_id=DEVICE, serial=serial, golden_inputs=golden, version=name
            )
            publisher.publish_desired(DEVICE, publisher.sign(manifest))
            watcher.wait_event(EventType.SWAPPED, where=lambda e, s=serial: e.serial == s)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert seen_versions == {"a", "b"}
    assert counts["inproc"] > 100
    assert counts["http"] > 10
    assert len([e for e in watcher.events() if e.type == EventType.SWAPPED]) == SWAPS + 1
