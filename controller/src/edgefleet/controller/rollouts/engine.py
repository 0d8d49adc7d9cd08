"""The rollout engine: moves each rollout through its waves, gates it, pauses or rolls it back.

All state lives in the database, so a controller killed at any moment resumes where it was: a
device is sent its manifest once (the signed manifest is stored before it is published, and only
unpublished ones are published again), and a device that converged is never sent it again.

Concurrency: the asyncio task ``rollout-engine`` ticks every interval (or sooner when ingest
nudges it); each tick's database work runs on a worker thread in one transaction per rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.fleet.tables import DeviceRow, TelemetryRow
from edgefleet.controller.publish.manifests import ManifestSigner
from edgefleet.controller.publish.variants import select_artifact_for
from edgefleet.controller.registry.db import aware
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.rollouts.gates import (
    GatePolicy,
    GateResult,
    check_failures,
    combine_figures,
    evaluate_gates,
)
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared import Topics, encode

log = logging.getLogger(__name__)

TERMINAL = frozenset({"active", "failed", "skipped", "rolled_back", "cancelled", "superseded"})
# Rollouts whose sent manifests still stand as the devices' desired state.
PUBLISHING = ("running", "paused", "rolling_back", "completed")
FAILED = frozenset({"failed", "rolled_back"})
BASELINE_WINDOW = timedelta(minutes=30)
PUBLISH_CONCURRENCY = 200  # QoS 1 publishes awaiting their PUBACK at once

Publish = Callable[[str, bytes, bool], Awaitable[None]]


@dataclass(frozen=True)
class Outgoing:
    row_id: int
    topic: str
    payload: bytes


class RolloutEngine:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        signer: ManifestSigner,
        topics: Topics,
        publish: Publish,
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.signer = signer
        self.topics = topics
        self.publish = publish
        self.interval_s = interval_s
        self._nudge = asyncio.Event()
        self.manifests_published = 0

    def nudge(self) -> None:
        """Tick soon: something the engine waits for may have changed."""
        self._nudge.set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("rollout engine tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.interval_s)
            self._nudge.clear()

    async def tick(self) -> None:
        outbox = await asyncio.to_thread(self._step_all)
        published: list[int] = []
        slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def send(item: Outgoing) -> None:
            async with slots:
                try:
                    await self.publish(item.topic, item.payload, True)
                except ControllerError as e:
                    log.warning("publishing desired state to %s failed: %s", item.topic, e)
                    return
                published.append(item.row_id)

        await asyncio.gather(*(send(item) for item in outbox))
        if published:
            self.manifests_published += len(published)
            await asyncio.to_thread(self._mark_published, published)

    def mark_all_unpublished(self) -> None:
        """After a (re)connect: publish again every manifest not yet converged on its device.

        A broker that lost its retained messages (crash without persistence) gets them back;
        devices that already run what they were sent are not sent it again.
        """
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(RolloutDeviceRow)
                .join(RolloutRow)
                .where(
                    RolloutRow.status.in_(PUBLISHING),
                    RolloutDeviceRow.state.in_(("sent", "reverting")),
                )
            )
            for row in rows:
                row.published = False

    def _mark_published(self, ids: list[int]) -> None:
        with self.sessions.begin() as session:
            for row in session.scalars(
                select(RolloutDeviceRow).where(RolloutDeviceRow.id.in_(ids))
            ):
                row.published = True

    def _step_all(self) -> list[Outgoing]:
        with self.sessions() as session:
            ids = session.scalars(
                select(RolloutRow.id).where(RolloutRow.status.in_(("running", "rolling_back")))
            ).all()
        for rollout_id in ids:
            try:
                with self.sessions.begin() as session:
                    rollout = session.get(RolloutRow, rollout_id)
                    if rollout is not None:
                        self._step(session, rollout, datetime.now(UTC))
            except Exception:
                log.exception("rollout %d: step failed", rollout_id)
        return self._outbox()

    def _outbox(self) -> list[Outgoing]:
        with self.sessions() as session:
            rows = session.execute(
                select(
                    RolloutDeviceRow.id,
                    RolloutDeviceRow.device_id,
                    RolloutDeviceRow.signed_manifest,
                )
                .join(RolloutRow)
                .where(
                    RolloutRow.status.in_(PUBLISHING),
                    RolloutDeviceRow.published.is_(False),
                    RolloutDeviceRow.state.in_(("sent", "reverting")),
                    RolloutDeviceRow.signed_manifest.is_not(None),
                )
                .order_by(RolloutDeviceRow.id)
            ).all()
        return [
            Outgoing(row_id, self.topics.desired(device_id), manifest.encode())
            for row_id, device_id, manifest in rows
            if manifest is not None
        ]

    # --- one rollout -------------------------------------------------------------------------

    def _step(self, session: Session, rollout: RolloutRow, now: datetime) -> None:
        if rollout.status == "rolling_back":
            self._roll_back(session, rollout, now)
            return
        policy = GatePolicy.model_validate(rollout.policy)
        wave = rollout.current_wave
        scope = [d for d in rollout.devices if d.wave <= wave]
        devices = {
            d.id: d
            for d in session.scalars(
                select(DeviceRow).where(DeviceRow.id.in_([s.device_id for s in scope]))
            )
        }
        planned = [t for t in scope if t.state == "planned"]
        if planned:
            artifacts: dict[str, ArtifactRecord] = {
                a.target: a for a in self.registry.artifacts_for(rollout.model, rollout.version)
            }
            for target in planned:
                self._send(target, devices[target.device_id], artifacts, now)
        failed = sum(1 for d in scope if d.state in FAILED)
        failures = check_failures(policy, failed, len(scope))
        if not failures.passed:
            self._breach(rollout, policy, GateResult(False, (failures,)), now)
            return
        settled = all(d.state in TERMINAL or not devices[d.device_id].online for d in scope)
        if not settled:
            rollout.wave_settled_at = None
            return
        if rollout.wave_settled_at is None:
            rollout.wave_settled_at = now
            rollout.updated_at = now
            if policy.soak_s > 0:
                return
        if now < aware(rollout.wave_settled_at) + timedelta(seconds=policy.soak_s):
            return
        result = self._evaluate(session, rollout, policy, scope, devices)
        rollout.gate = {"wave": wave, **result.as_dict()}
        rollout.updated_at = now
        if not result.passed:
            self._breach(rollout, policy, result, now)
        elif wave >= len(rollout.waves) - 1:
            rollout.status = "completed"
            pending = sum(1 for d in scope if d.state not in TERMINAL)
            rollout.reason = "all waves passed their gates" + (
                f"; {pending} offline device(s) pending" if pending else ""
            )
        else:
            rollout.current_wave = wave + 1
            rollout.wave_settled_at = None
            log.info(
                "rollout %d: wave %d passed its gates; starting wave %d", rollout.id, wave, wave + 1
            )

    def _send(
        self,
        target: RolloutDeviceRow,
        device: DeviceRow,
        artifacts: dict[str, ArtifactRecord],
        now: datetime,
    ) -> None:
        runtimes = [r["name"] for r in device.runtimes or []]
        choice = select_artifact_for(runtimes, device.accelerators or [], artifacts)
        target.updated_at = now
        if choice.target is None:
            target.state = "skipped"
            target.reason = choice.reason
            return
        artifact = artifacts[choice.target]
        target.target = artifact.target
        target.sha256 = artifact.sha256
        if device.active and device.active.get("sha256") == artifact.sha256:
            target.state = "active"
            target.serial = device.active.get("serial")
            target.reason = "already running this artifact"
            target.converged_at = now
            return
        self._issue(target, device, artifact, now, state="sent")

    def _issue(
        self,
        target: RolloutDeviceRow,
        device: DeviceRow,
        artifact: ArtifactRecord,
        now: datetime,
        *,
        state: str,
    ) -> None:
        serial = max(device.last_serial_issued or 0, device.reported_last_serial or 0) + 1
        device.last_serial_issued = serial
        signed = self.signer.sign(device.id, artifact, serial)
        target.signed_manifest = encode(signed).decode()
        target.serial = serial
        target.sha256 = artifact.sha256
        target.state = state
        target.published = False
        target.sent_at = now
        target.updated_at = now

    def _breach(
        self, rollout: RolloutRow, policy: GatePolicy, result: GateResult, now: datetime
    ) -> None:
        rollout.gate = {"wave": rollout.current_wave, **result.as_dict()}
        rollout.reason = f"gate breached in wave {rollout.current_wave}: {result.summary()}"
        rollout.status = "paused" if policy.on_breach == "pause" else "rolling_back"
        rollout.updated_at = now
        log.warning("rollout %d: %s -> %s", rollout.id, rollout.reason, rollout.status)

    def _roll_back(self, session: Session, rollout: RolloutRow, now: datetime) -> None:
        ids = [d.device_id for d in rollout.devices]
        devices = {d.id: d for d in session.scalars(select(DeviceRow).where(DeviceRow.id.in_(ids)))}
        for target in rollout.devices:
            if target.state == "planned":
                target.state, target.reason, target.updated_at = (
                    "cancelled",
                    "rollout rolled back",
                    now,
                )
            elif target.state in {"sent", "active", "failed"}:
                self._revert(target, devices[target.device_id], now)
        waiting = [
            d for d in rollout.devices if d.state == "reverting" and devices[d.device_id].online
        ]
        if not waiting:
            rollout.status = "rolled_back"
            rollout.updated_at = now

    def _revert(self, target: RolloutDeviceRow, device: DeviceRow, now: datetime) -> None:
        previous = target.previous
        if not previous:
            target.state = "rolled_back" if target.state == "failed" else target.state
            target.reason = (target.reason or "") + "; no previous version to roll back to"
            target.updated_at = now
            return
        try:
            version = self.registry.get_version(previous["model_id"], previous["version"])
        except ControllerError as e:
            target.reason = f"cannot roll back: {e}"
            target.state = "failed"
            return
        artifact = version.artifact(previous["target"])
        if artifact is None or artifact.sha256 != previous["sha256"]:
            target.state = "failed"
            target.reason = f"cannot roll back: previous artifact {previous['sha256'][:12]} unknown"
            return
        if (
            device.active
            and device.active.get("sha256") == artifact.sha256
            and target.state == "failed"
        ):
            target.state = "rolled_back"  # never swapped: it still runs the previous version
            target.updated_at = now
            return
        self._issue(target, device, artifact, now, state="reverting")

    def _evaluate(
        self,
        session: Session,
        rollout: RolloutRow,
        policy: GatePolicy,
        scope: list[RolloutDeviceRow],
        devices: dict[str, DeviceRow],
    ) -> GateResult:
        """Gate figures for the wave: the new version since the rollout began, against each
        device's previous version before it swapped. Two queries, whatever the wave's size."""
        failed = sum(1 for d in scope if d.state in FAILED)
        active = [t for t in scope if t.state == "active"]
        created = aware(rollout.created_at)
        ids = [t.device_id for t in active]
        new_windows = [
            (r, e, p)
            for _, model, version, r, e, p, _ in _windows(session, ids, since=created)
            if (model, version) == (rollout.model, rollout.version)
        ]
        previous = {
            t.device_id: (t.previous, aware(t.converged_at))
            for t in active
            if t.previous and t.converged_at is not None
        }
        base_windows = []
        for device_id, model, version, r, e, p, end in _windows(
            session, list(previous), since=created - BASELINE_WINDOW
        ):
            slot, swapped_at = previous[device_id]
            if (model, version) == (slot["model_id"], slot["version"]) and end <= swapped_at:
                base_windows.append((r, e, p))
        baseline = combine_figures(base_windows) if base_windows else None
        return evaluate_gates(
            policy,
            failed=failed,
            devices=len(scope),
            new=combine_figures(new_windows),
            baseline=baseline,
        )


def _windows(
    session: Session, device_ids: list[str], *, since: datetime
) -> list[tuple[str, str, str, int, int, float | None, datetime]]:
    """Telemetry windows of these devices ending after ``since``, any model version."""
    rows: list[tuple[str, str, str, int, int, float | None, datetime]] = []
    for start in range(0, len(device_ids), 500):  # keep IN lists short
        query = select(
            TelemetryRow.device_id, TelemetryRow.model_id, TelemetryRow.version,
            TelemetryRow.requests, TelemetryRow.errors, TelemetryRow.p95_ms,
            TelemetryRow.window_end,
        ).where(
            TelemetryRow.device_id.in_(device_ids[start : start + 500]),
            TelemetryRow.window_end >= since,
        )  # fmt: skip
        rows += [(d, m, v, r, e, p, aware(w)) for d, m, v, r, e, p, w in session.execute(query)]
    return rows
