"""A signed model goes from publisher to serving: ONNX and TFLite, MQTT chunks and HTTP Range."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.errors import BadInputError
from edgefleet.shared import DeviceState, EventType, decode
from support.agent_harness import DEVICE, x_batch
from support.mqtt import MqttProbe, wait_until


def test_onnx_over_mqtt_chunks_swaps_and_serves(models, publisher, watcher, start_agent):
    agent = start_agent()
    watcher.wait_state(lambda s: s.status == "idle")
    golden = [x_batch(1, seed=i) for i in range(3)]
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=golden)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))

    swapped = watcher.wait_event(EventType.SWAPPED)
    assert swapped.serial == 1
    assert swapped.figures["golden_pairs"] == 3
    state = watcher.wait_state(lambda s: s.status == "serving")
    assert state.active is not None
    assert state.active.sha256 == manifest.artifact.sha256
    assert state.last_serial == 1
    inputs = x_batch(5, seed=9)
    out = agent.infer(inputs)
    np.testing.assert_allclose(out["logits"], models.onnx_a.reference(inputs)["logits"], rtol=1e-5)
    assert manifest.artifact.chunk_count > 1
    requested = publisher.requested_indices(manifest.artifact.sha256)
    assert sorted(requested) == list(range(manifest.artifact.chunk_count))


def test_hello_and_state_on_connect(publisher, watcher, start_agent):
    start_agent(labels={"site": "lab"})
    watcher.wait_state(lambda s: s.status == "idle")
    wait_until(lambda: len(watcher.hellos()) == 1)
    hello = watcher.hellos()[0]
    assert hello.device_id == DEVICE
    assert hello.labels == {"site": "lab"}
    assert {r.name for r in hello.runtimes} >= {"onnxruntime", "litert"}
    assert hello.hardware.cpu_count >= 1
    assert hello.accelerators == ()


def test_tflite_two_dynamic_inputs_over_http_range(models, publisher, watcher, start_agent):
    agent = start_agent(fetch_prefer="http")
    rng = np.random.default_rng(3)
    golden = [
        {"a": rng.random((2, 4), dtype=np.float32), "b": rng.random((2, 4), dtype=np.float32)}
    ]
    manifest = publisher.manifest(
        models.tflite_add,
        device_id=DEVICE,
        serial=1,
        golden_inputs=golden,
        mqtt_source=False,
        http_source=True,
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    assert publisher.http_ranges  # fetched with Range requests
    assert all(r.startswith("bytes=") for r in publisher.http_ranges)
    for batch in (1, 3, 7):  # the dynamic batch dimension resizes the interpreter
        inputs = {"a": np.full((batch, 4), 2.0, np.float32), "b": np.ones((batch, 4), np.float32)}
        np.testing.assert_array_equal(agent.infer(inputs)["total"], np.full((batch, 4), 3.0))


def test_tflite_int8_applies_quantization_params(models, publisher, watcher, start_agent):
    agent = start_agent()
    rng = np.random.default_rng(5)
    golden = [{"x": rng.uniform(-2, 2, (1, 4)).astype(np.float32)} for _ in range(4)]
    manifest = publisher.manifest(
        models.tflite_int8, device_id=DEVICE, serial=1, golden_inputs=golden, atol=0.11
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    x = {"x": np.array([[0.5, -1.0, 1.5, 0.25]], np.float32)}
    got = agent.infer(x)["logits"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, models.tflite_int8.reference(x)["logits"], atol=0.11)


def test_onnx_several_inputs_dynamic_dims_and_int64(models, publisher, watcher, start_agent):
    agent = start_agent()
    golden = [{"features": np.ones((2, 3), np.float32), "ids": np.array([5, 7], np.int64)}]
    manifest = publisher.manifest(models.multi, device_id=DEVICE, serial=1, golden_inputs=golden)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    for n, d in ((1, 1), (4, 9)):
        inputs = {"features": np.ones((n, d), np.float32), "ids": np.arange(n, dtype=np.int64)}
        np.testing.assert_allclose(agent.infer(inputs)["score"], d + np.arange(n))
    with pytest.raises(BadInputError, match="dtype"):
        agent.infer({"features": np.ones((1, 2), np.float32), "ids": np.zeros(1, np.int32)})


def test_telemetry_reports_latency_per_version_and_system(models, publisher, watcher, start_agent):
    agent = start_agent()
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=[x_batch(1)], version="t1"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    for i in range(50):
        agent.infer(x_batch(1, seed=i))
    telemetry = watcher.wait_telemetry(lambda t: any(m.requests > 0 for m in t.models))
    stats = next(m for m in telemetry.models if m.version == "t1")
    assert stats.model_id == "demo"
    assert stats.latency_ms is not None
    assert (
        0
        < stats.latency_ms.p50
        <= stats.latency_ms.p95
        <= stats.latency_ms.p99
        <= stats.latency_ms.max
    )
    assert stats.throughput_rps > 0
    assert telemetry.system.rss_bytes > 10 << 20
    assert telemetry.system.disk_free_bytes > 0
    assert telemetry.system.mem_total_bytes >= telemetry.system.mem_used_bytes
    assert telemetry.window_end > telemetry.window_start
    # telemetry travels at QoS 0, events and state at QoS 1
    received = list(watcher.probe.received)
    assert {r.qos for r in received if r.topic == watcher.topics.telemetry(DEVICE)} == {0}
    assert {r.qos for r in received if r.topic == watcher.topics.events(DEVICE)} == {1}
    late = MqttProbe(watcher.probe.host, watcher.probe.port).connect()
    try:  # a subscriber that arrives later still gets the state: it is retained
        late.subscribe(watcher.topics.state(DEVICE))
        retained = late.wait_for(lambda r: r.retain)
        assert decode(retained.payload, DeviceState).status == "serving"
    finally:
        late.close()


def test_tflite_converted_by_litert_torch(models, publisher, watcher, start_agent):
    agent = start_agent()
    model = models.litert_torch
    rng = np.random.default_rng(11)
    names = [s.name for s in model.signature.inputs]
    shapes = [s.shape for s in model.signature.inputs]

    def sample():
        return {
            n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes, strict=True)
        }

    manifest = publisher.manifest(
        model, device_id=DEVICE, serial=1, golden_inputs=[sample(), sample()], atol=1e-4
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    inputs = sample()
    out = agent.infer(inputs)
    np.testing.assert_allclose(
        out["output_0"],
        model.reference(inputs)["output_0"],
        atol=1e-4,
    )
