"""One hostile device sends every poison a device is able to send, retained where it can be; the
controller is restarted (so the retained poison comes back); the other devices' hello, state,
telemetry and events all land, a rollout to them completes, and the fleet and device pages
answer 200 throughout. Real controller process, real agent processes, real mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.shared import DEFAULT_LIMITS, encode
from support.mqtt import MqttProbe, wait_until
from support.samples import device_hello, device_state, device_telemetry, slot

pytestmark = pytest.mark.slow

EVIL = "evil-1"
GOOD = ["good-1", "good-2"]
PAGES = ["/dashboard", f"/dashboard/devices/{EVIL}", f"/dashboard/devices/{GOOD[0]}",
         "/dashboard/rollouts", "/api/devices", f"/api/devices/{EVIL}",
         f"/api/series/devices/{EVIL}", "/api/events", "/metrics"]  # fmt: skip


def _envelope(kind: str, body: object, version: int = 2) -> bytes:
    return json.dumps({"v": version, "kind": kind, "body": body}).encode()


def _body(message) -> dict:
    return json.loads(encode(message))["body"]


def _set(body: dict, path: str, value: object) -> dict:
    node = body
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return body


def poisons(topics, sha256: str) -> list[tuple[str, str, bytes, bool]]:
    """(name, topic, payload, retain) for every hostile message tried."""
    state = _body(device_state(EVIL, active=slot()))
    hello = _body(device_hello(EVIL))
    telemetry = _body(device_telemetry(EVIL, 3.0))
    now = datetime.now(UTC)
    event = {"device_id": EVIL, "type": "error", "at": now.isoformat(), "reason": "x"}
    deep = b"[" * 100_000 + b"]" * 100_000
    out = [
        ("state last_serial 2^64", topics.state(EVIL),
         _envelope("state", _set(dict(state), "last_serial", 2**64)), True),
        ("hello ram_bytes 2^80", topics.hello(EVIL),
         _envelope("hello", _set(json.loads(json.dumps(hello)), "hardware.ram_bytes", 2**80)),
         True),
        ("telemetry requests 2^64", topics.telemetry(EVIL),
         _envelope("telemetry", _set(json.loads(json.dumps(telemetry)), "models.0.requests",
                                     2**64)), False),
        ("telemetry p95 1e308", topics.telemetry(EVIL),
         _envelope("telemetry", _set(json.loads(json.dumps(telemetry)),
                                     "models.0.latency_ms.p95", 1e308)), False),
        ("telemetry p95 Infinity", topics.telemetry(EVIL),
         _envelope("telemetry", _set(json.loads(json.dumps(telemetry)),
                                     "models.0.latency_ms.p95", "@inf")).replace(
             b'"@inf"', b"Infinity"), False),
        ("deep JSON (100000 levels)", topics.events(EVIL), deep, False),
        ("a 5000-digit integer", topics.state(EVIL),
         _envelope("state", _set(dict(state), "seq", "@big")).replace(b'"@big"', b"9" * 5000),
         False),
        ("oversize telemetry (1 MiB + 1)", topics.telemetry(EVIL),
         b" " * (DEFAULT_LIMITS.max_message_bytes + 1), False),
        ("NUL in a reason", topics.events(EVIL), _envelope("event", {**event, "reason": "a\x00b"}),
         False),
        ("timestamp 9999-12-31T23:59:59-01:00", topics.events(EVIL),
         _envelope("event", {**event, "at": "9999-12-31T23:59:59-01:00"}), False),
        ("state claiming another device", topics.state(EVIL),
         _envelope("state", _set(dict(state), "device_id", GOOD[0])), True),
        ("not JSON", topics.hello(EVIL), b"\xff\xfe garbage", False),
        # In bounds but extreme: accepted, and every page must still render it.
        ("in-bound extremes", topics.telemetry(EVIL), _envelope("telemetry", _set(_set(_set(
            json.loads(json.dumps(telemetry)), "models.0.latency_ms.p95", 1e7),
            "models.0.requests", 2**31 - 1), "system.temperature_c", -100.0)), False),
        ("event dated 2199 (clamped)", topics.events(EVIL),
         _envelope("event", {**event, "at": "2199-01-01T00:00:00+00:00"}), False),
    ]  # fmt: skip
    for n in range(200):  # the chunk flood: 32 indices of an artifact never issued to it
        request = {"device_id": EVIL, "sha256": sha256, "indices": list(range(32))}
        out.append((f"chunk request {n}", topics.fetch(EVIL), _envelope("fetch", request), False))
    return out


class PageWatch:
    """Polls every page while the test runs; records anything but a 200."""

    def __init__(self, base_url: str, token: str) -> None:
        self.failures: list[tuple[str, int, str]] = []
        self.fetches = 0
        self._stop = threading.Event()
        self._base, self._token = base_url, token
        self._thread = threading.Thread(target=self._run, name="page-watch", daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"}
        with httpx.Client(base_url=self._base, headers=headers, timeout=10) as client:
            while not self._stop.wait(0.2):
                for page in PAGES:
                    try:
                        response = client.get(page)
                    except httpx.TransportError:
                        continue  # the controller is being restarted
                    self.fetches += 1
                    if response.status_code != 200:
                        self.failures.append((page, response.status_code, response.text[:300]))

    def __enter__(self) -> PageWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def _samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, reason label) -> value, from a Prometheus text page."""
    return {
        (sample.name, sample.labels.get("reason", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _since(fleet, path: str, after: datetime, key: Callable[[dict], str]) -> list[dict]:
    return [row for row in fleet.controller.get(path) if datetime.fromisoformat(key(row)) > after]


def test_a_hostile_device_affects_no_other_device_nor_the_pages(fleet):
    topics = fleet.topics
    for device_id in GOOD:
        fleet.start_agent(device_id, labels={"site": "good"})
    fleet.wait_devices(GOOD)
    first = fleet.rollout("1", expect={"completed", "paused", "rolled_back"}, waves="100%",
                          selector="site=good", policy={"soak_s": 0})  # fmt: skip
    assert first["status"] == "completed", first
    sha256 = fleet.controller.get(f"/api/devices/{GOOD[0]}")["active"]["sha256"]
    figures: dict[str, object] = {}

    with (
        PageWatch(fleet.controller.url, fleet.controller.token) as pages,
        MqttProbe(fleet.broker.host, fleet.broker.port) as evil,
    ):
        evil.subscribe(topics.artifact_chunks(sha256), qos=0)
        rss_before = _rss(fleet.controller.proc.pid)
        started = time.monotonic()
        sent = poisons(topics, sha256)
        # It says a valid hello first, so it has a row and pages of its own to break.
        evil.publish(topics.hello(EVIL), encode(device_hello(EVIL)), qos=1)
        for _name, topic, payload, retain in sent:
            evil.publish(topic, payload, qos=1, retain=retain)
        figures["poison_messages"] = len(sent)
        figures["poison_bytes"] = sum(len(p) for _, _, p, _ in sent)

        # Once the controller has seen them all (its counters say so), measure what they cost.
        # Deferred requests of one device coalesce while their lookup runs: wait for the counts
        # of refused and rate-limited requests to settle, short of none of them.
        seen: list[float] = []

        def refused_all() -> bool:
            samples = _samples(fleet.controller.api("GET", "/metrics").text)
            seen.append(
                samples.get(("edgefleet_chunk_requests_refused_total", "not_issued"), 0)
                + samples.get(("edgefleet_ingest_dropped_total", "chunk_request_rate_limited"), 0)
            )
            return len(seen) > 2 and seen[-1] == seen[-3] and seen[-1] >= 150

        try:
            wait_until(refused_all, timeout=30, interval=0.5)
        except TimeoutError:
            text = fleet.controller.api("GET", "/metrics").text
            raise AssertionError(f"{seen}\n{text}\n{fleet.controller.log()[-4000:]}") from None
        figures["ingest_s"] = round(time.monotonic() - started, 2)
        figures["rss_growth_mib"] = round((_rss(fleet.controller.proc.pid) - rss_before) / 2**20, 1)
        with evil._lock:
            chunk_bytes = sum(len(m.payload) for m in evil.received if "/artifacts/" in m.topic)
        figures["chunk_bytes_published_to_flood"] = chunk_bytes
        metrics = fleet.controller.api("GET", "/metrics").text

        # Restart: the retained poison (state, hello) is delivered again on subscribe.
        restart_at = datetime.now(UTC)
        fleet.controller.stop()
        fleet.controller.start()
        for device_id in GOOD:  # a fresh hello, state, event and telemetry from each
            fleet.agents[device_id].terminate()
            fleet.start_agent(device_id, labels={"site": "good"})
        fleet.wait_devices(GOOD)

        def landed() -> bool:
            devices = {d["id"]: d for d in fleet.controller.get("/api/devices")}
            for device_id in GOOD:
                device = devices[device_id]
                if datetime.fromisoformat(device["last_seen"]) <= restart_at:
                    return False
                events = fleet.controller.get(f"/api/devices/{device_id}/events")
                if not any(datetime.fromisoformat(e["at"]) > restart_at for e in events):
                    return False
                series = fleet.controller.get(f"/api/series/devices/{device_id}")
                if max(series["system"]["t"], default=0) < restart_at.timestamp() * 1000 - 60e3:
                    return False
            return True

        wait_until(landed, timeout=60, interval=0.5)
        ended = {"completed", "paused", "rolled_back"}
        second = fleet.rollout(
            "2", expect=ended, waves="100%", selector="site=good", policy={"soak_s": 0}
        )
        assert second["status"] == "completed", second
        for device_id in GOOD:
            device = fleet.controller.get(f"/api/devices/{device_id}")
            assert device["active"]["version"] == "2"
        assert pages.fetches > len(PAGES) * 5
    print("hostile device figures:", json.dumps(figures))

    assert pages.failures == []
    assert chunk_bytes == 0  # nothing was ever sent to it
    assert figures["rss_growth_mib"] < 100  # type: ignore[operator]
    counted = _samples(metrics)
    malformed = [name for name, _, _, _ in sent if _is_malformed(name)]
    assert counted[("edgefleet_ingest_dropped_total", "malformed")] == len(malformed)
    assert counted[("edgefleet_ingest_dropped_total", "oversize")] == 1
    assert counted[("edgefleet_ingest_dropped_total", "spoofed")] == 1
    assert 'edgefleet_ingest_clamped_timestamps_total{field="at",kind="events"} 1.0' in metrics
    # The controller's own log holds no traceback from any of it.
    assert "Traceback" not in fleet.controller.log(), fleet.controller.log()[-3000:]
    evil_row = fleet.controller.get(f"/api/devices/{EVIL}")
    assert datetime.fromisoformat(evil_row["last_seen"]) < datetime.now(UTC) + timedelta(minutes=1)


def _is_malformed(name: str) -> bool:
    return not name.startswith(
        ("chunk request", "oversize", "state claiming", "in-bound", "event dated")
    )
