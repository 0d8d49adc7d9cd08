"""Telemetry ingest in worker processes (``ingest_workers``), against a real controller and a
real mosquitto: every window lands once through the shared subscription, the main process keeps
hellos and states, counts and ``/metrics`` totals of the workers show in the main process, a
worker killed with SIGKILL is started again while its counts stay counted, and no worker
outlives its controller."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import httpx
from dash_sim import topics_of
from prometheus_client.parser import text_string_to_metric_families

from support.fleet import ControllerProcess
from support.latency_windows import LatencyFleet
from support.mqtt import wait_until

DEVICES = 12


def stored_windows(controller: ControllerProcess) -> int:
    with sqlite3.connect(controller.data_dir / "controller.db") as db:
        return int(db.execute("SELECT count(*) FROM system_samples").fetchone()[0])


def requests_total(controller: ControllerProcess) -> dict[tuple[str, str, str], float]:
    text = httpx.get(f"{controller.url}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edgefleet_model_requests_total":
                found[(s.labels["model_id"], s.labels["version"], s.labels["group"])] = s.value
    return found


def workers_of(controller: ControllerProcess) -> dict[str, int]:
    return controller.get("/api/health")["ingest"]["workers"]


def send_round(fleet: LatencyFleet, rounds: int) -> int:
    sent = 0
    for _ in range(rounds):
        for i in range(DEVICES):
            fleet.send(f"pi-{i:02d}", 10 + i)
            sent += 1
    return sent


def test_two_workers_write_every_window_once_and_report_to_the_main_process(
    start_controller, probe
) -> None:
    controller = start_controller(EDGEFLEET_INGEST_WORKERS="2")
    assert workers_of(controller) == {"configured": 2, "connected": 2, "restarts": 0, "stalled": 0}
    assert len(controller.ingest_worker_pids()) == 2
    fleet = LatencyFleet(probe, topics_of(controller), seed=3)
    for i in range(DEVICES):
        fleet.hello(f"pi-{i:02d}", "plant-a" if i % 2 else "plant-b")
    wait_until(lambda: len(controller.get("/api/devices")) == DEVICES, timeout=20, interval=0.1)

    sent = send_round(fleet, 10)
    wait_until(lambda: stored_windows(controller) >= sent, timeout=30, interval=0.2)
    wait_until(lambda: requests_total(controller) == fleet.requests, timeout=10, interval=0.2)
    time.sleep(1.0)  # nothing more arrives: each window was written by one worker only
    assert stored_windows(controller) == sent
    health = controller.get("/api/health")
    assert health["status"] == "ok"
    ingest = health["ingest"]
    assert ingest["received"]["telemetry"] == sent  # the workers' counts, in the main process
    assert ingest["received"]["hello"] == DEVICES  # the main process's own
    assert ingest["written"] == sent + DEVICES
    assert ingest["telemetry_dropped"] == 0
    devices = {d["id"]: d for d in controller.get("/api/devices")}
    assert all(d["labels"]["group"] in {"plant-a", "plant-b"} for d in devices.values())
    assert all(d["last_telemetry"] is not None for d in devices.values())  # written by workers


def test_a_killed_worker_is_started_again_and_its_counts_stay(start_controller, probe) -> None:
    controller = start_controller(EDGEFLEET_INGEST_WORKERS="2")
    fleet = LatencyFleet(probe, topics_of(controller), seed=4)
    for i in range(DEVICES):
        fleet.hello(f"pi-{i:02d}", "plant-a")
    wait_until(lambda: len(controller.get("/api/devices")) == DEVICES, timeout=20, interval=0.1)
    sent = send_round(fleet, 5)
    wait_until(lambda: requests_total(controller) == fleet.requests, timeout=30, interval=0.2)
    before = requests_total(controller)

    victim, survivor = controller.ingest_worker_pids()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: workers_of(controller)["restarts"] == 1, timeout=20, interval=0.1)
    wait_until(lambda: workers_of(controller)["connected"] == 2, timeout=30, interval=0.1)
    pids = controller.ingest_worker_pids()
    assert survivor in pids
    assert victim not in pids
    assert len(pids) == 2
    assert "ingest worker" in controller.log()
    assert "exited with code -9" in controller.log()
    # the killed worker's totals stay counted: Prometheus counters never go down
    assert all(requests_total(controller)[key] >= value for key, value in before.items())

    sent += send_round(fleet, 5)
    wait_until(lambda: stored_windows(controller) >= sent, timeout=30, interval=0.2)
    wait_until(lambda: requests_total(controller) == fleet.requests, timeout=10, interval=0.2)
    assert controller.get("/api/health")["ingest"]["received"]["telemetry"] == sent


def test_a_worker_that_stops_reporting_shows_as_stalled_until_it_reports_again(
    start_controller, probe
) -> None:
    """A worker that cannot reach its event loop (SIGSTOP here; a write that waits, in life)
    reports no backlog: the main process must not take its silence for an empty queue."""
    controller = start_controller(EDGEFLEET_INGEST_WORKERS="2")
    fleet = LatencyFleet(probe, topics_of(controller), seed=5)
    for i in range(DEVICES):
        fleet.hello(f"pi-{i:02d}", "plant-a")
    wait_until(lambda: len(controller.get("/api/devices")) == DEVICES, timeout=20, interval=0.1)
    victim, _ = controller.ingest_worker_pids()
    os.kill(victim, signal.SIGSTOP)
    try:
        sent = send_round(fleet, 3)  # the shared subscription gives the stopped one its share
        wait_until(lambda: workers_of(controller)["stalled"] == 1, timeout=15, interval=0.2)
        health = controller.get("/api/health")
        assert health["status"] == "degraded"
        assert "has sent nothing for" in controller.log()
    finally:
        os.kill(victim, signal.SIGCONT)
    wait_until(lambda: workers_of(controller)["stalled"] == 0, timeout=15, interval=0.2)
    wait_until(lambda: stored_windows(controller) >= sent, timeout=30, interval=0.2)
    assert controller.get("/api/health")["status"] == "ok"
    assert workers_of(controller)["restarts"] == 0  # stalled is not exited: nothing restarted
    assert "is reporting again" in controller.log()


def test_workers_stop_with_their_controller_however_it_ends(start_controller) -> None:
    stopped = start_controller(EDGEFLEET_INGEST_WORKERS="2")
    pids = stopped.ingest_worker_pids()
    assert len(pids) == 2
    stopped.stop()  # SIGTERM: the workers are asked to stop and write what they hold
    assert stopped.proc is not None  # uvicorn ends by re-raising the signal it handled
    assert stopped.proc.returncode in (0, -signal.SIGTERM), stopped.log()
    assert "did not stop in time" not in stopped.log()
    assert not [p for p in pids if _alive(p)]

    killed = start_controller(EDGEFLEET_INGEST_WORKERS="1")
    pids = killed.ingest_worker_pids()
    assert len(pids) == 1
    killed.kill()  # SIGKILL: nothing is asked; the workers see their pipe close
    wait_until(lambda: not [p for p in pids if _alive(p)], timeout=15, interval=0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
