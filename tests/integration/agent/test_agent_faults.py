"""Faults: the broker restarts mid-download; malformed payloads arrive on every topic the agent
subscribes to. The agent neither crashes nor loses what it already has."""

from __future__ import annotations

import json

import numpy as np

from edgefleet.shared import DeviceState, EventType, decode, encode
from support import agent_models
from support.agent_harness import DEVICE, DeviceWatcher, x_batch
from support.mqtt import MqttProbe, wait_until
from support.publisher import TestPublisher

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def test_broker_restart_mid_download(own_broker, topics, signing, start_agent, tmp_path):
    publisher = TestPublisher(own_broker.host, own_broker.port, topics, signing[0]).start()
    agent = start_agent(broker=own_broker)
    try:
        big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=5, hidden=128)
        manifest = publisher.manifest(
            big, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=128
        )
        sha, count = manifest.artifact.sha256, manifest.artifact.chunk_count
        publisher.chunk_limit = 6
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        reassembler_dir = agent.store.downloads_dir
        wait_until(
            lambda: (reassembler_dir / f"{sha}.bitmap").exists() and publisher.frames_sent == 6
        )
        wait_until(lambda: _present(reassembler_dir / f"{sha}.bitmap") == 6)
        held = _held(reassembler_dir / f"{sha}.bitmap")
        own_broker.restart()  # clean stop: retained desired state survives in persistence
        publisher.requests.clear()
        publisher.chunk_limit = None
        publisher.wait_connected()
        wait_until(lambda: agent.session.connects >= 2, timeout=20)
        wait_until(lambda: agent.current_model is not None, timeout=30)
        assert agent.current_model.info.sha256 == sha
        again = publisher.requested_indices(sha)
        assert set(again) == set(range(count)) - held  # only the missing chunks, asked again
        inputs = x_batch(3, seed=1)
        np.testing.assert_allclose(
            agent.infer(inputs)["logits"], big.reference(inputs)["logits"], rtol=1e-4
        )
    finally:
        publisher.stop()


def _held(path) -> set[int]:
    try:
        bits = bytes.fromhex(json.loads(path.read_text())["bits"])
    except (OSError, ValueError, KeyError):
        return set()
    return {i for i in range(len(bits) * 8) if bits[i >> 3] & (1 << (i & 7))}


def _present(path) -> int:
    return len(_held(path))


def test_malformed_payloads_on_every_topic_do_not_crash(
    models, publisher, watcher: DeviceWatcher, start_agent, topics
):
    agent = start_agent()
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    garbage = [
        b"",
        b"\x00\xff\xfe",
        b"not json",
        b"[]",
        b'{"v": 1, "kind": "manifest", "body": {}}',
        b'{"v": 99, "kind": "manifest", "body": {}}',
        b'{"v": 1, "kind": "command", "body": {"type": "rollback"}}',
        b'{"v": 1, "kind": "telemetry", "body": {}}',
        b"EFC1\x00\x00\x00\x05{bad}",
        b"{" * 100_000,
        encode(publisher.sign(manifest)).replace(b'"serial":1', b'"serial":"x"'),
    ]
    for payload in garbage:
        publisher.publish_raw(topics.desired(DEVICE), payload)
        publisher.publish_raw(topics.commands(DEVICE), payload)
    # garbage on an artifact chunk topic while a download is in progress
    model_b = publisher.manifest(models.onnx_b, device_id=DEVICE, serial=2, golden_inputs=GOLDEN)

    def sabotage(request):
        for payload in garbage:
            publisher.client.publish(
                topics.artifact_chunks(model_b.artifact.sha256), payload, qos=1
            )

    publisher.on_request = sabotage
    publisher.publish_desired(DEVICE, publisher.sign(model_b))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 2)
    assert agent.current_model.info.serial == 2
    inputs = x_batch(2, seed=4)
    np.testing.assert_allclose(
        agent.infer(inputs)["logits"], models.onnx_b.reference(inputs)["logits"], rtol=1e-5
    )
    assert all(t.is_alive() for t in [agent.updater._thread, agent.session._thread])
    assert not [e for e in watcher.events() if e.type == EventType.ERROR]


def test_starts_without_a_broker_and_connects_when_it_appears(own_broker, topics, start_agent):
    own_broker.stop()
    agent = start_agent(broker=own_broker)
    assert agent.session.connects == 0
    assert agent.updater.status == "idle"  # booted and ready to serve without the broker
    own_broker.start()
    probe = MqttProbe(own_broker.host, own_broker.port).connect()
    try:
        probe.subscribe(topics.state(DEVICE))
        wait_until(lambda: agent.session.connects == 1, timeout=20)
        probe.wait_for(lambda r: decode(r.payload, DeviceState).status == "idle")
    finally:
        probe.close()
