"""An HTTP source dripping bytes holds nothing up: a real agent obeys a rollback command within
about a second meanwhile, cuts the download off at its deadline (or moves to MQTT when the
source is too slow), and leaves no worker thread or socket behind, also when it stops."""

from __future__ import annotations

import threading
import time

import psutil

from edgefleet.shared import EventType
from support import agent_models
from support.agent_harness import DEVICE, x_batch
from support.mqtt import wait_until
from support.slow_http import SlowSource

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def serve(publisher, watcher, model, serial, **kwargs):
    manifest = publisher.manifest(
        model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN, version=f"v{serial}", **kwargs
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == serial)
    return manifest


def from_source(publisher, model, serial, source: SlowSource, *, mqtt: bool):
    """A manifest for ``model`` whose HTTP source is ``source`` (and MQTT too, if ``mqtt``)."""
    manifest = publisher.manifest(
        model,
        device_id=DEVICE,
        serial=serial,
        golden_inputs=GOLDEN,
        version=f"v{serial}",
        mqtt_source=mqtt,
        http_source=True,
    )
    url = source.url(path=f"/artifacts/{manifest.artifact.sha256}")
    return manifest.model_copy(
        update={"artifact": manifest.artifact.model_copy(update={"http_url": url})}
    )


def http_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgefleet-agent-fetch-http")]


def connections_to(port: int) -> list:
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr[1] == port]


def test_a_rollback_is_obeyed_while_a_dripping_download_is_cut_off_at_its_deadline(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    agent = start_agent(fetch_prefer="http", fetch_timeout_s=4.0, http_timeout_s=30.0)
    serve(publisher, watcher, models.onnx_a, 1)
    serve(publisher, watcher, models.onnx_b, 2)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=9, hidden=64)
    data = big.path.read_bytes()
    with SlowSource(data, drip_s=0.1) as source:  # a 32-byte chunk every 3.2 s
        manifest = from_source(publisher, big, 3, source, mqtt=False)
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        wait_until(lambda: source.gets, timeout=20)
        opened = time.monotonic()
        time.sleep(0.3)  # the agent is inside a blocking read of the dripping body now
        sent = time.monotonic()
        publisher.command_rollback(DEVICE, reason="during a slow download")
        rolled = watcher.wait_event(EventType.ROLLED_BACK, timeout=10)
        obeyed_in = time.monotonic() - sent
        print(f"rollback obeyed {obeyed_in:.2f}s after the command was sent")
        assert obeyed_in < 2.0, obeyed_in
        assert rolled.serial == 2
        assert agent.current_model.info.serial == 1
        assert agent.updater.status == "updating"  # the download is still under way

        failed = watcher.wait_event(
            EventType.DOWNLOAD_FAILED, timeout=20, where=lambda e: e.serial == 3
        )
        gave_up_in = time.monotonic() - opened
        print(f"download given up {gave_up_in:.2f}s after its request (deadline 4 s)")
        assert 3.5 <= gave_up_in < 5.0, gave_up_in  # the 4 s deadline, in wall-clock time
        assert failed.reason.startswith("gave up after 4.0s: http: HTTP download from ")
        assert "cut off at the download deadline (fetch_timeout_s)" in failed.reason
        state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 3)
        assert state.last_outcome.result == "download_failed"
        assert "cut off at the download deadline" in state.last_outcome.reason
        assert agent.current_model.info.serial == 1  # still serving what it rolled back to
        np_inputs = x_batch(2, seed=4)
        assert agent.infer(np_inputs)["logits"].shape == (2, 3)
        assert http_workers() == []
        assert connections_to(source.port) == []
        assert source.disconnected.wait(2)  # the agent hung up on the dripping source
        assert len(source.gets) == 1  # the deadline left no time for a retry


def test_a_source_too_slow_for_a_chunk_gives_way_to_mqtt(
    models, publisher, watcher, start_agent, tmp_path
):
    agent = start_agent(fetch_prefer="http", http_timeout_s=1.0)
    serve(publisher, watcher, models.onnx_a, 1)
    with SlowSource(models.onnx_b.path.read_bytes(), drip_s=0.1) as source:  # 3.2 s a chunk
        manifest = from_source(publisher, models.onnx_b, 2, source, mqtt=True)
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 2)
        assert agent.current_model.info.serial == 2
        assert len(source.gets) == 1  # tried first, dropped after 1 s without a whole chunk
        assert publisher.requested_indices(manifest.artifact.sha256)  # MQTT finished it
        assert source.disconnected.wait(2)
        assert http_workers() == []
        assert connections_to(source.port) == []


def test_stopping_during_a_dripping_download_is_prompt_and_leaves_nothing(
    models, publisher, watcher, start_agent, tmp_path
):
    agent = start_agent(fetch_prefer="http", http_timeout_s=30.0)
    serve(publisher, watcher, models.onnx_a, 1)
    with SlowSource(models.onnx_b.path.read_bytes(), drip_s=0.05) as source:
        manifest = from_source(publisher, models.onnx_b, 2, source, mqtt=False)
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        wait_until(lambda: source.gets, timeout=20)
        time.sleep(0.3)
        started = time.monotonic()
        agent.stop()
        assert time.monotonic() - started < 3.0
        assert http_workers() == []  # gone before stop() returned
        wait_until(
            lambda: not [t for t in threading.enumerate() if t.name.startswith("edgefleet-agent")],
            timeout=3,
        )
        assert connections_to(source.port) == []
        assert source.disconnected.wait(2)
