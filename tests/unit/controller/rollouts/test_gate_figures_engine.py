"""The rollout engine's gate figures from stored telemetry, on SQLite and PostgreSQL: each side's
windows merged into one distribution (the new version since the rollout began; the version each
device ran before, up to its swap), judged with the counts they stand for."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet.writer import write_batch
from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.publish.manifests import ManifestSigner
from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.rollouts.engine import RolloutEngine
from edgefleet.controller.rollouts.gates import GatePolicy, GateResult
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared import (
    LatencyHistogram,
    LatencySummary,
    ModelStats,
    SystemStats,
    Telemetry,
    Topics,
    decode_versioned,
    encode,
    generate_signing_key,
)
from edgefleet.shared.histogram import Histogram

CREATED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SWAPPED = CREATED + timedelta(seconds=30)
SYSTEM = SystemStats(
    cpu_percent=10.0, process_cpu_percent=1.0, rss_bytes=1, mem_used_bytes=1,
    mem_total_bytes=2, disk_free_bytes=1,
)  # fmt: skip
IDLE = [f"idle-{i:02d}" for i in range(19)]


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_engine_for(database_url)
    create_schema(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def engine(sessions: sessionmaker[Session], tmp_path: Path) -> RolloutEngine:
    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        raise AssertionError("judging a wave publishes nothing")

    store = ArtifactStore(tmp_path / "artifacts")
    topics = Topics()
    signer = ManifestSigner(
        generate_signing_key(), topics, public_url="http://127.0.0.1:9", chunk_size=65536,
        ttl=timedelta(hours=3), urls=ArtifactUrlSigner(b"k" * 32), store=store,
    )  # fmt: skip
    return RolloutEngine(sessions, ModelRegistry(sessions, store), signer, topics, publish)


def window(
    device_id: str, end: datetime, version: str, values: list[float], *, wire: int = 2
) -> Telemetry:
    histogram = Histogram.of_values(values)
    stats = ModelStats(
        model_id="m", version=version, requests=len(values), errors=0,
        latency_ms=LatencySummary(
            p50=histogram.percentile(0.5) or 0.0, p95=histogram.percentile(0.95) or 0.0,
            p99=histogram.percentile(0.99) or 0.0, max=max(values),
        ),
        latency_hist=LatencyHistogram.model_validate(histogram.wire_fields()),
    )  # fmt: skip
    message = Telemetry(
        device_id=device_id, window_start=end - timedelta(seconds=10), window_end=end,
        models=(stats,), system=SYSTEM,
    )  # fmt: skip
    return decode_versioned(encode(message, version=wire), Telemetry)[1]


def traffic(rng: random.Random, n: int, ms: float, *, tail: float = 0.0) -> list[float]:
    values = [ms * rng.uniform(0.95, 1.05) for _ in range(n)]
    for k in range(round(tail * n)):
        values[int(k / tail)] = 10 * ms * rng.uniform(0.95, 1.05)
    return values


def store_rollout(sessions: sessionmaker[Session], devices: list[str]) -> int:
    with sessions.begin() as session:
        rollout = RolloutRow(
            model="m", version="2", selector="*", waves=[len(devices)], wave_spec="100%",
            policy=GatePolicy().model_dump(mode="json"), status="running", created_at=CREATED,
        )  # fmt: skip
        session.add(rollout)
        session.flush()
        for device_id in devices:
            previous = {"model_id": "m", "version": "1", "serial": 1, "sha256": "a" * 64,
                        "target": "onnx-fp32"}  # fmt: skip
            session.add(
                RolloutDeviceRow(
                    rollout_id=rollout.id, device_id=device_id, wave=0, state="active",
                    serial=2, previous=previous, converged_at=SWAPPED,
                )
            )  # fmt: skip
        return rollout.id


def evaluate(engine: RolloutEngine, rollout_id: int) -> GateResult:
    with engine.sessions() as session:
        rollout = session.get(RolloutRow, rollout_id)
        assert rollout is not None
        policy = GatePolicy.model_validate(rollout.policy)
        return engine._evaluate(session, rollout, policy, list(rollout.devices))


def p95_figures(result: GateResult) -> dict[str, object]:
    (check,) = [c for c in result.checks if c.name == "p95_regression"]
    return {**check.figures, "passed": check.passed, "detail": check.detail}


def test_the_engine_judges_the_merged_distributions_of_stored_windows(sessions, engine):
    """One busy device slow on 6 % of its new version's requests (4.3 % of the wave's), 19
    idle ones unchanged: the wave's p95 did not move, and the gate says so."""
    rng = random.Random(1)
    messages, old_values, new_values = [], [], []
    for device_id, n in [("busy", 200)] + [(d, 4) for d in IDLE]:
        for k in range(6):  # a minute of v1 before the swap, a minute of v2 after it
            before = traffic(rng, n, 2.0)
            after = traffic(rng, n, 2.0, tail=0.06 if device_id == "busy" else 0.0)
            messages.append(window(device_id, SWAPPED - timedelta(seconds=10 * k), "1", before))
            messages.append(window(device_id, SWAPPED + timedelta(seconds=10 * k + 5), "2", after))
            old_values += before
            new_values += after
        # Neither side: v1 after the swap, a window from long before, another model.
        messages.append(window(device_id, SWAPPED + timedelta(seconds=3), "1", [99.0] * 50))
        messages.append(window(device_id, CREATED - timedelta(hours=2), "1", [99.0] * 50))
    with sessions.begin() as session:
        write_batch(session, messages, now=CREATED + timedelta(minutes=2))
    rollout_id = store_rollout(sessions, ["busy", *IDLE])

    result = evaluate(engine, rollout_id)

    figures = p95_figures(result)
    assert result.passed, result.summary()
    assert (figures["new_requests"], figures["previous_requests"]) == (1656, 1656)
    assert figures["new_p95_ms"] == Histogram.of_values(new_values).percentile(0.95)
    assert figures["previous_p95_ms"] == Histogram.of_values(old_values).percentile(0.95)
    assert figures["exact"] is True
    assert figures["new_p95_ms"] < 2.2  # the busy device's tail is under 5 % of the wave


def test_v1_devices_windows_count_and_make_the_figures_approximate(sessions, engine):
    rng = random.Random(2)
    messages = []
    for device_id, wire in (("v2", 2), ("v1", 1)):
        for k in range(3):
            before, after = traffic(rng, 30, 2.0), traffic(rng, 30, 9.0)
            messages.append(
                window(device_id, SWAPPED - timedelta(seconds=10 * k), "1", before, wire=wire)
            )
            messages.append(
                window(device_id, SWAPPED + timedelta(seconds=10 * k + 5), "2", after, wire=wire)
            )
    with sessions.begin() as session:
        write_batch(session, messages, now=CREATED + timedelta(minutes=2))
    rollout_id = store_rollout(sessions, ["v1", "v2"])

    result = evaluate(engine, rollout_id)

    figures = p95_figures(result)
    assert not result.passed
    assert (figures["new_requests"], figures["previous_requests"]) == (180, 180)
    assert figures["exact"] is False
    assert "over 180 new and 180 previous requests, approximate" in result.summary()
