"""The rollout engine: moves each rollout through its waves, gates it, pauses or rolls it back.

All state lives in the database, so a controller killed at any moment resumes where it was: a
device is sent its manifest once (the signed manifest is stored before it is published, and only
unpublished ones are published again), and a device that converged is never sent it again.
Each rollout-device state is derived by :func:`convergence.derive_target` from what was issued,
what the device reports and the clock; this module is the only writer of those states.

Every rollout ends: each issued device converges, fails or times out by its install deadline,
and each wave is ready by its own deadline (install timeout + soak from its start) or breaches.

Concurrency: the asyncio task ``rollout-engine`` ticks every interval (or sooner when ingest
nudges it); each tick's database work runs on a worker thread in one transaction per rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import JsonValue
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.fleet.selectors import device_facts
from edgefleet.controller.fleet.tables import DeviceRow, TelemetryRow
from edgefleet.controller.publish.manifests import ManifestNotSignedError, ManifestSigner
from edgefleet.controller.publish.variants import select_artifact_for
from edgefleet.controller.registry.db import aware
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.rollouts import facts
from edgefleet.controller.rollouts.convergence import WaveTarget, derive_target, wave_progress
from edgefleet.controller.rollouts.gates import (
    GateCheck,
    GatePolicy,
    GateResult,
    LatencyWindow,
    check_failures,
    combine_figures,
    evaluate_gates,
)
from edgefleet.controller.rollouts.states import (
    DERIVED,
    FAILURES,
    STEPPING,
    RolloutStatus,
    TargetState,
)
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared import Topics, encode
from edgefleet.shared.histogram import Histogram

log = logging.getLogger(__name__)

# Targets a rollback reverts (a device that may run, or be about to run, the new version).
REVERT = frozenset(
    {
        TargetState.SENT,
        TargetState.PENDING,
        TargetState.ACTIVE,
        TargetState.FAILED,
        TargetState.TIMED_OUT,
        TargetState.ROLLED_BACK,
    }
)
BASELINE_WINDOW = timedelta(minutes=30)
PUBLISH_CONCURRENCY = 200  # QoS 1 publishes awaiting their PUBACK at once

Publish = Callable[[str, bytes, bool], Awaitable[None]]
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        offline_after_s: float = 120.0,
        clock: Clock = utcnow,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.signer = signer
        self.topics = topics
        self.publish = publish
        self.interval_s = interval_s
        self.offline_after = timedelta(seconds=offline_after_s)
        self.clock = clock
        self._nudge = asyncio.Event()
        self.manifests_published = 0
        self.manifests_renewed = 0

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
        outbox = await asyncio.to_thread(self.step_all)
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
            await asyncio.to_thread(self.mark_published, published)

    def mark_all_unpublished(self) -> None:
        """After a (re)connect: publish every device's current desired state again.

        Converged or not: a broker that lost its retained messages (a crash without persistence,
        or one restored from an old snapshot) gets each device's latest manifest back, so a
        wiped device never picks up an old one.
        """
        with self.sessions.begin() as session:
            for row in session.scalars(_current_desired()):
                row.published = False

    def mark_published(self, ids: list[int]) -> None:
        """Record what the broker took; a manifest's install deadline runs from its first
        publication (the wave's own deadline, from the wave's start, bounds a broker outage)."""
        now = self.clock()
        with self.sessions.begin() as session:
            query = (
                select(RolloutDeviceRow, RolloutRow.policy)
                .join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
                .where(RolloutDeviceRow.id.in_(ids))
            )
            for row, policy in session.execute(query):
                row.published = True
                if row.deadline_at is None:
                    timeout = GatePolicy.model_validate(policy).install_timeout_s
                    row.deadline_at = now + timedelta(seconds=timeout)

    def step_all(self) -> list[Outgoing]:
        """One tick's database work: step each moving rollout, derive the rest, renew, and
        return the desired states to publish."""
        now = self.clock()
        with self.sessions() as session:
            ids = session.scalars(
                select(RolloutRow.id).where(RolloutRow.status.in_(list(STEPPING)))
            ).all()
        for rollout_id in ids:
            try:
                with self.sessions.begin() as session:
                    rollout = session.get(RolloutRow, rollout_id)
                    if rollout is not None:
                        self._step(session, rollout, now)
            except Exception:
                log.exception("rollout %d: step failed", rollout_id)
        with self.sessions.begin() as session:
            self._derive_standing(session, now)
        with self.sessions.begin() as session:
            self._renew(session, now)
        return self._outbox()

    def _outbox(self) -> list[Outgoing]:
        with self.sessions() as session:
            rows = session.execute(
                _current_desired(
                    RolloutDeviceRow.id,
                    RolloutDeviceRow.device_id,
                    RolloutDeviceRow.signed_manifest,
                    DeviceRow.wire_version,
                )
                .where(RolloutDeviceRow.published.is_(False))
                .order_by(RolloutDeviceRow.id)
            ).all()
        return [
            Outgoing(
                row_id, self.topics.desired(device_id), facts.desired_payload(manifest, version)
            )
            for row_id, device_id, manifest, version in rows
        ]

    # --- deriving -----------------------------------------------------------------------------

    def _derive(
        self,
        targets: list[RolloutDeviceRow],
        devices: dict[str, DeviceRow],
        policy: GatePolicy,
        now: datetime,
        *,
        wave: int | None = None,
        wave_deadline: datetime | None = None,
    ) -> None:
        """Derive each target's state; the current ``wave``'s devices time out no later than
        ``wave_deadline``, so the wave never expires on a device that has not."""
        timeout = timedelta(seconds=policy.install_timeout_s)
        for target in targets:
            if target.state not in DERIVED:
                continue
            device = devices.get(target.device_id)
            report = facts.reported(device, now, self.offline_after)
            cap = wave_deadline if target.wave == wave else None
            issue = facts.issued(target, cap, device)
            derived = derive_target(issue, report, timeout, now)
            before = target.state
            if facts.apply(target, derived, now) and derived.state != before:
                log.info(
                    "rollout %d: %s %s -> %s%s",
                    target.rollout_id,
                    target.device_id,
                    before,
                    derived.state,
                    f" ({derived.reason})" if derived.reason else "",
                )

    def _derive_standing(self, session: Session, now: datetime) -> None:
        """Keep deriving devices' current desired states in rollouts that no longer step
        (paused, completed, rolled back): pending devices converge later, a converged one may
        still roll itself back."""
        query = _current_desired(RolloutDeviceRow, DeviceRow, RolloutRow.policy).where(
            RolloutDeviceRow.state.in_(list(DERIVED)),
            RolloutRow.status.not_in(list(STEPPING)),
        )
        for target, device, policy in session.execute(query):
            self._derive([target], {device.id: device}, GatePolicy.model_validate(policy), now)

    def _devices(self, session: Session, targets: list[RolloutDeviceRow]) -> dict[str, DeviceRow]:
        ids = [t.device_id for t in targets]
        rows: dict[str, DeviceRow] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows |= {
                d.id: d for d in session.scalars(select(DeviceRow).where(DeviceRow.id.in_(chunk)))
            }
        return rows

    # --- one rollout -------------------------------------------------------------------------

    def _step(self, session: Session, rollout: RolloutRow, now: datetime) -> None:
        policy = GatePolicy.model_validate(rollout.policy)
        if rollout.status == RolloutStatus.ROLLING_BACK:
            self._roll_back(session, rollout, policy, now)
            return
        wave = rollout.current_wave
        waves = len(rollout.waves)
        scope = [d for d in rollout.devices if d.wave <= wave]
        devices = self._devices(session, scope)
        planned = [t for t in scope if t.state == TargetState.PLANNED]
        if planned:
            artifacts: dict[str, ArtifactRecord] = {
                a.target: a for a in self.registry.artifacts_for(rollout.model, rollout.version)
            }
            for target in planned:
                self._send(target, devices.get(target.device_id), artifacts, policy, now)
            if any(t.wave == wave for t in planned) or rollout.wave_started_at is None:
                rollout.wave_started_at = now
                rollout.updated_at = now
                log.info(
                    "rollout %d: wave %d/%d started: %d device(s), deadline in %s",
                    rollout.id, wave + 1, waves, len(planned),
                    timedelta(seconds=policy.install_timeout_s + policy.soak_s),
                )  # fmt: skip
        started = aware(rollout.wave_started_at) if rollout.wave_started_at else now
        install = timedelta(seconds=policy.install_timeout_s)
        self._derive(scope, devices, policy, now, wave=wave, wave_deadline=started + install)
        failed = [d for d in scope if d.state in FAILURES]
        failures = check_failures(policy, len(failed), len(scope), _examples(failed))
        if not failures.passed:
            self._breach(rollout, policy, GateResult(False, (failures,)), now)
            return
        progress = wave_progress(
            [WaveTarget(TargetState(t.state), t.offline_at_start) for t in scope if t.wave == wave],
            min_converged=policy.min_converged,
            started_at=started,
            install_timeout=timedelta(seconds=policy.install_timeout_s),
            now=now,
        )
        if not progress.ready:
            rollout.wave_settled_at = None
            if progress.expired:
                check = GateCheck(
                    "wave_deadline",
                    float(progress.converged),
                    float(progress.needed),
                    False,
                    f"wave {wave + 1}/{waves} did not converge within its install deadline "
                    f"({timedelta(seconds=policy.install_timeout_s)}): {progress.reason}",
                )
                self._breach(rollout, policy, GateResult(False, (check,)), now)
            return
        if rollout.wave_settled_at is None:
            rollout.wave_settled_at = now
            rollout.updated_at = now
            if policy.soak_s > 0:
                return
        if now < aware(rollout.wave_settled_at) + timedelta(seconds=policy.soak_s):
            return
        result = self._evaluate(session, rollout, policy, scope)
        rollout.gate = {"wave": wave, **result.as_dict()}
        rollout.updated_at = now
        if not result.passed:
            self._breach(rollout, policy, result, now)
        elif wave >= waves - 1:
            rollout.status = RolloutStatus.COMPLETED
            rollout.finished_at = now
            rollout.reason = "all waves passed their gates; " + _tally(rollout.devices)
            log.info("rollout %d: completed: %s", rollout.id, rollout.reason)
        else:
            rollout.current_wave = wave + 1
            rollout.wave_settled_at = None
            log.info(
                "rollout %d: wave %d/%d passed its gates (%s); starting wave %d/%d",
                rollout.id, wave + 1, waves, progress.reason, wave + 2, waves,
            )  # fmt: skip

    def _send(
        self,
        target: RolloutDeviceRow,
        device: DeviceRow | None,
        artifacts: dict[str, ArtifactRecord],
        policy: GatePolicy,
        now: datetime,
    ) -> None:
        target.updated_at = now
        if device is None:
            target.state = TargetState.SKIPPED
            target.reason = "device no longer registered"
            return
        runtimes = [r["name"] for r in device.runtimes or []]
        choice = select_artifact_for(runtimes, device.accelerators or [], artifacts)
        if choice.target is None:
            target.state = TargetState.SKIPPED
            target.reason = choice.reason
            return
        artifact = artifacts[choice.target]
        target.target = artifact.target
        target.sha256 = artifact.sha256
        active = device.active or {}
        if active.get("sha256") == artifact.sha256 and active.get("serial"):
            target.state = TargetState.ACTIVE  # nothing to send: it runs this artifact already
            target.serial = int(active["serial"])
            target.reason = "already running this artifact"
            target.converged_at = now
            return
        self._issue(target, device, artifact, policy, now, state=TargetState.SENT)

    def _issue(
        self,
        target: RolloutDeviceRow,
        device: DeviceRow,
        artifact: ArtifactRecord,
        policy: GatePolicy,
        now: datetime,
        *,
        state: TargetState,
    ) -> None:
        try:
            self._sign_into(target, device, artifact, policy, now)
        except ManifestNotSignedError as e:
            target.state = TargetState.FAILED
            target.reason = str(e)
            target.updated_at = now
            log.warning("rollout %d: %s: %s", target.rollout_id, device.id, e)
            return
        target.state = state
        target.reason = None
        target.sent_at = now
        target.deadline_at = None  # set when the broker takes it (mark_published)
        target.offline_at_start = not facts.device_online(device, now, self.offline_after)
        target.updated_at = now

    def _sign_into(
        self,
        target: RolloutDeviceRow,
        device: DeviceRow,
        artifact: ArtifactRecord,
        policy: GatePolicy,
        now: datetime,
    ) -> None:
        """Sign the next serial of ``device`` for ``artifact`` into ``target``, unpublished, in
        the manifest schema of the device's wire version, with the operator's latency budget for
        its class (if any).

        Raises:
            ManifestNotSignedError: the manifest would not fit the broker, or a chunk index its
                bound; nothing was changed.
        """
        serial = max(device.last_serial_issued or 0, device.reported_last_serial or 0) + 1
        runtimes = [r["name"] for r in device.runtimes or []]
        facts_of = device_facts(device.id, device.arch, runtimes, device.accelerators or [])
        signed = self.signer.sign(
            device.id,
            artifact,
            serial,
            wire_version=device.wire_version or 1,
            health=policy.health(),
            latency_budget_ms=policy.latency_budget_for(device.labels or {}, facts_of),
            latency_ratio=policy.latency_ratio,
            now=now,
        )
        device.last_serial_issued = serial
        target.signed_manifest = encode(signed).decode()
        artifact_ref, golden = signed.manifest.get("artifact"), signed.manifest.get("golden_ref")
        target.golden_sha256 = _sha256_of(golden)
        # The chunk indexes a schema-2 manifest names: served to this device like the files.
        target.index_sha256 = _sha256_of(_chunk_index_of(artifact_ref))
        target.golden_index_sha256 = _sha256_of(_chunk_index_of(golden))
        target.serial = serial
        target.sha256 = artifact.sha256
        target.target = artifact.target
        target.published = False
        target.manifest_expires_at = now + self.signer.ttl

    def _breach(
        self, rollout: RolloutRow, policy: GatePolicy, result: GateResult, now: datetime
    ) -> None:
        wave = rollout.current_wave
        rollout.gate = {"wave": wave, **result.as_dict()}
        rollout.reason = (
            f"gate breached in wave {wave + 1}/{len(rollout.waves)}: {result.summary()}"
        )
        rollout.status = (
            RolloutStatus.PAUSED if policy.on_breach == "pause" else RolloutStatus.ROLLING_BACK
        )
        rollout.wave_settled_at = None
        rollout.updated_at = now
        log.warning("rollout %d: %s -> %s", rollout.id, rollout.reason, rollout.status)

    # --- rolling back -------------------------------------------------------------------------

    def _roll_back(
        self, session: Session, rollout: RolloutRow, policy: GatePolicy, now: datetime
    ) -> None:
        devices = self._devices(session, list(rollout.devices))
        for target in rollout.devices:
            if target.state == TargetState.PLANNED:
                target.state = TargetState.CANCELLED
                target.reason = "rollout rolled back before this wave"
                target.updated_at = now
            elif target.state in REVERT:
                self._revert(target, devices.get(target.device_id), policy, now)
        self._derive(list(rollout.devices), devices, policy, now)
        waiting = [
            t
            for t in rollout.devices
            if t.state == TargetState.REVERTING
            and not (
                t.offline_at_start
                and not facts.device_online(devices[t.device_id], now, self.offline_after)
            )
        ]
        if not waiting:
            rollout.status = RolloutStatus.ROLLED_BACK
            rollout.finished_at = now
            rollout.reason = f"{rollout.reason or 'rolled back'}; {_tally(rollout.devices)}"
            rollout.updated_at = now
            log.warning("rollout %d: rolled back: %s", rollout.id, rollout.reason)

    def _revert(
        self,
        target: RolloutDeviceRow,
        device: DeviceRow | None,
        policy: GatePolicy,
        now: datetime,
    ) -> None:
        previous = target.previous
        why = target.reason
        target.updated_at = now
        if device is None:
            target.state, target.reason = TargetState.CANCELLED, "device no longer registered"
            return
        if not previous:  # it ran nothing before: there is nothing to send it back to
            note = "no previous version to roll back to: it keeps what it runs"
            if note not in (why or ""):
                target.reason = _join(why, note)
            return
        active = device.active or {}
        settled = (TargetState.ACTIVE, TargetState.FAILED, TargetState.ROLLED_BACK)
        if target.state in settled and active.get("sha256") == previous["sha256"]:
            target.state = TargetState.REVERTED  # never swapped, or left it by itself
            target.reason = _join(why, "still runs its previous version")
            target.converged_at = now
            return
        artifact = self._artifact(previous["model_id"], previous["version"], previous["target"])
        if artifact is None or artifact.sha256 != previous["sha256"]:
            target.state = TargetState.FAILED
            target.reason = f"cannot roll back: previous artifact {previous['sha256'][:12]} unknown"
            return
        self._issue(target, device, artifact, policy, now, state=TargetState.REVERTING)
        target.reason = _join(why, f"reverting to {previous['version']}")

    def _artifact(self, model: str, version: str, target: str | None) -> ArtifactRecord | None:
        try:
            record = self.registry.get_version(model, version)
        except ControllerError:
            return None
        return record.artifact(target) if target else None

    # --- renewing -----------------------------------------------------------------------------

    def _renew(self, session: Session, now: datetime) -> None:
        """Re-sign desired states before they expire, so a device offline for longer than a
        manifest lives still finds a valid one when it comes back."""
        horizon = now + self.signer.ttl / 2
        query = _current_desired(RolloutDeviceRow, DeviceRow, RolloutRow).where(
            RolloutDeviceRow.manifest_expires_at.is_not(None),
            RolloutDeviceRow.manifest_expires_at <= horizon,
        )
        for target, device, rollout in session.execute(query):
            if target.state in (TargetState.REVERTING, TargetState.REVERTED) and target.previous:
                slot: dict[str, Any] = target.previous
                artifact = self._artifact(slot["model_id"], slot["version"], slot["target"])
            else:
                artifact = self._artifact(rollout.model, rollout.version, target.target)
            if artifact is None or artifact.sha256 != target.sha256:
                target.manifest_expires_at = None  # nothing to renew it with: say so once
                log.warning("cannot renew the desired state of %s: artifact gone", device.id)
                continue
            old = target.serial
            try:
                self._sign_into(
                    target, device, artifact, GatePolicy.model_validate(rollout.policy), now
                )
            except ManifestNotSignedError as e:
                target.manifest_expires_at = None  # cannot be renewed: say so once
                log.warning("cannot renew the desired state of %s: %s", device.id, e)
                continue
            self.manifests_renewed += 1
            log.info(
                "renewed the desired state of %s: serial %s -> %s", device.id, old, target.serial
            )

    def _evaluate(
        self,
        session: Session,
        rollout: RolloutRow,
        policy: GatePolicy,
        scope: list[RolloutDeviceRow],
    ) -> GateResult:
        """Gate figures for the wave: the new version since the rollout began, against each
        device's previous version before it swapped, each side's windows merged into one
        distribution as they stream in. Two queries, whatever the wave's size."""
        failed = sum(1 for d in scope if d.state in FAILURES)
        active = [t for t in scope if t.state == TargetState.ACTIVE]
        created = aware(rollout.created_at)
        ids = [t.device_id for t in active]
        new = combine_figures(
            LatencyWindow(r, e, p, hist)
            for _, model, version, r, e, p, hist, _ in _windows(session, ids, since=created)
            if (model, version) == (rollout.model, rollout.version)
        )
        previous = {
            t.device_id: (t.previous, aware(t.converged_at))
            for t in active
            if t.previous and t.converged_at is not None
        }

        def ran_before(device_id: str, model: str, version: str, end: datetime) -> bool:
            """A window of the version the device ran before, ending before it swapped."""
            slot, swapped_at = previous[device_id]
            return (model, version) == (slot["model_id"], slot["version"]) and end <= swapped_at

        baseline = combine_figures(
            LatencyWindow(r, e, p, hist)
            for device_id, model, version, r, e, p, hist, end in _windows(
                session, list(previous), since=created - BASELINE_WINDOW
            )
            if ran_before(device_id, model, version, end)
        )
        return evaluate_gates(policy, failed=failed, devices=len(scope), new=new, baseline=baseline)


def _current_desired(*columns: Any) -> Any:
    """Rows holding each device's current desired state: the one it was issued last."""
    return (
        select(*(columns or (RolloutDeviceRow,)))
        .join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
        .join(DeviceRow, DeviceRow.id == RolloutDeviceRow.device_id)
        .where(
            RolloutDeviceRow.signed_manifest.is_not(None),
            RolloutDeviceRow.serial == DeviceRow.last_serial_issued,
        )
    )


def _examples(failed: list[RolloutDeviceRow], most: int = 3) -> list[str]:
    """``"pi-3 timed_out: timed out after 15m: ..."`` for the first few failed devices."""
    return [f"{t.device_id} {t.state}: {(t.reason or 'no reason')[:200]}" for t in failed[:most]]


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def _tally(targets: list[RolloutDeviceRow]) -> str:
    """ "3 active, 1 pending, 1 timed_out": how many devices are in each state."""
    counts: dict[str, int] = {}
    for target in targets:
        counts[target.state] = counts.get(target.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# device, model, version, requests, errors, p95 (v1), histogram (v2), window end
_Window = tuple[str, str, str, int, int, float | None, Histogram | None, datetime]


def _windows(session: Session, device_ids: list[str], *, since: datetime) -> Iterator[_Window]:
    """Telemetry windows of these devices ending after ``since``, any model version, streamed
    (each carries a histogram: a long rollout of a large wave has many)."""
    for start in range(0, len(device_ids), 500):  # keep IN lists short
        query = select(
            TelemetryRow.device_id, TelemetryRow.model_id, TelemetryRow.version,
            TelemetryRow.requests, TelemetryRow.errors, TelemetryRow.p95_ms,
            TelemetryRow.latency_hist, TelemetryRow.window_end,
        ).where(
            TelemetryRow.device_id.in_(device_ids[start : start + 500]),
            TelemetryRow.window_end >= since,
        )  # fmt: skip
        for d, m, v, r, e, p, hist, w in session.execute(query.execution_options(yield_per=2000)):
            yield d, m, v, r, e, p, hist, aware(w)


def _chunk_index_of(ref: JsonValue) -> JsonValue:
    """The chunk index a signed file ref names (schema 2), else None."""
    return ref.get("chunk_index") if isinstance(ref, dict) else None


def _sha256_of(ref: JsonValue) -> str | None:
    """The sha256 of a signed file ref, else None."""
    return str(ref["sha256"]) if isinstance(ref, dict) and "sha256" in ref else None
