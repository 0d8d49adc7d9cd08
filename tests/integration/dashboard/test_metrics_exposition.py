"""``GET /metrics`` of a real controller parses with prometheus-client's text parser and carries
fleet, per-device, per-model-version, rollout and ingest series."""

from __future__ import annotations

from pathlib import Path

import httpx
from dash_sim import SimDevice, topics_of
from prometheus_client.parser import text_string_to_metric_families

from support.fleet import register_tiny_model
from support.mqtt import wait_until


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_carry_fleet_latency_rollout_and_ingest_series(start_controller, probe, tmp_path):
    controller = start_controller()
    register_tiny_model(Path(controller.data_dir), version="2", targets=("onnx-int8",))
    topics = topics_of(controller)
    devices = [SimDevice(probe, topics, f"m-{i}") for i in range(3)]
    for i, device in enumerate(devices):
        device.hello()
        device.state(version="1")
        device.telemetry(2.0 + i, qos=1)
    wait_until(lambda: len(controller.get("/api/telemetry")) == 3, timeout=20, interval=0.1)
    response = controller.api(
        "POST", "/api/rollouts",
        json={"model": "tiny", "version": "2", "waves": "1,100%", "policy": {"soak_s": 60}},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    rollout_id = str(response.json()["id"])
    wait_until(
        lambda: (
            "sent" in {d["state"] for d in controller.get(f"/api/rollouts/{rollout_id}")["devices"]}
        ),
        timeout=20,
    )

    reply = httpx.get(f"{controller.url}/metrics", timeout=10)  # no token: read-only
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = _samples(reply.text)
    assert _value(samples, "edgefleet_devices", state="online") == 3
    assert _value(samples, "edgefleet_devices", state="offline") == 0
    assert (
        _value(
            samples, "edgefleet_devices_online", model_id="tiny", version="1", runtime="onnxruntime"
        )
        == 3
    )
    # Latency is a histogram of merged windows (test_metrics_histograms), never a quantile gauge;
    # these windows carry summaries alone, as a v1 agent's do: counted, not put in buckets.
    assert not any(name == "edgefleet_device_latency_seconds" for name, _ in samples)
    series = {"model_id": "tiny", "version": "1", "group": "none"}
    assert _value(samples, "edgefleet_model_requests_total", **series) == 150
    assert _value(samples, "edgefleet_model_summary_only_windows_total", **series) == 3
    assert _value(samples, "edgefleet_device_window_requests", device_id="m-0", model_id="tiny",
                  version="1") == 50  # fmt: skip
    assert _value(samples, "edgefleet_device_temperature_celsius", device_id="m-1") == 48.5
    assert _value(
        samples, "edgefleet_rollout_status",
        rollout_id=rollout_id, model_id="tiny", version="2", status="running",
    ) == 1  # fmt: skip
    assert _value(
        samples, "edgefleet_rollout_status",
        rollout_id=rollout_id, model_id="tiny", version="2", status="completed",
    ) == 0  # fmt: skip
    assert _value(samples, "edgefleet_rollout_wave", rollout_id=rollout_id) == 0
    assert _value(samples, "edgefleet_rollout_waves", rollout_id=rollout_id) == 2
    assert _value(samples, "edgefleet_rollout_devices", rollout_id=rollout_id, state="sent") == 1
    assert _value(samples, "edgefleet_rollout_devices", rollout_id=rollout_id, state="planned") == 2
    assert _value(samples, "edgefleet_ingest_received_total", kind="telemetry") == 3
    assert _value(samples, "edgefleet_ingest_received_total", kind="hello") == 3
    assert _value(samples, "edgefleet_ingest_telemetry_dropped_total") == 0
    assert _value(samples, "edgefleet_ingest_written_total") >= 9
    assert ("edgefleet_ingest_rate", frozenset({("stage", "written")})) in samples
    assert _value(samples, "edgefleet_broker_connected") == 1

    aborted = controller.api(
        "POST", f"/api/rollouts/{rollout_id}/abort", json={"reason": "canary looked <odd>"}
    )
    assert aborted.status_code == 200, aborted.text
    page = httpx.get(f"{controller.url}/dashboard/rollouts/{rollout_id}", timeout=10).text
    assert "Why aborted:</strong> canary looked &lt;odd&gt;" in page
    assert "max p95 regression" in page  # the gate's thresholds are on the page
    assert page.count('<a href="/dashboard/devices/m-') == 3  # one row per device
    after = _samples(httpx.get(f"{controller.url}/metrics", timeout=10).text)
    assert _value(
        after, "edgefleet_rollout_status",
        rollout_id=rollout_id, model_id="tiny", version="2", status="aborted",
    ) == 1  # fmt: skip
