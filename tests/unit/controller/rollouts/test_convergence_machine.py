"""Stateful property test of fleet truth: the rollout engine, the writer and the convergence
functions against simulated devices on a simulated clock.

Devices swap, refuse, fail validation or download, roll back by themselves, freeze, go offline
and come back; their messages to the controller are delayed, reordered, duplicated and lost
(retained state survives a loss and comes back when the controller resubscribes); the
controller restarts. The engine and writer are the real ones on a real SQLite database; only
the broker and the devices are simulated, speaking the real wire models through
``encode``/``decode``.

Invariants after every step: every rollout ends (completed, paused or rolled back) within
``waves * (install timeout + soak) + install timeout`` of its start (plus one clock step per
phase); the controller's recorded active slot of every device equals the device's own once its
messages are delivered; no (device, serial) is issued with two different manifests and serials
only grow; nothing of a rolled-back version is issued after the rollback; every failed,
timed-out or rolled-back device and every ended rollout carries a reason; a rollout completes
only when every device that was online in each wave converged or failed within the budget.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.fleet.writer import write_batch
from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.publish.manifests import ManifestSigner
from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.rollouts.engine import RolloutEngine
from edgefleet.controller.rollouts.errors import RolloutConflictError
from edgefleet.controller.rollouts.gates import GatePolicy
from edgefleet.controller.rollouts.planner import change_status, create_rollout
from edgefleet.controller.rollouts.states import (
    ENDED,
    FAILURES,
    UNFINISHED,
    RolloutStatus,
    TargetState,
)
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared import (
    DeviceState,
    DeviceStatus,
    Manifest,
    Outcome,
    OutcomeResult,
    Progress,
    ProgressPhase,
    SignedManifest,
    SlotInfo,
    Topics,
    WireModel,
    decode,
    decode_versioned,
    encode,
    generate_signing_key,
)
from support.registry import register_fake_versions
from support.samples import device_hello

INSTALL = timedelta(minutes=15)
SOAK = timedelta(seconds=60)
MAX_STEP = timedelta(minutes=10)
OFFLINE_AFTER = timedelta(minutes=2)
TTL = timedelta(hours=3)  # short, so runs cross renewals
DEVICES = 5
VERSIONS = ("1", "2", "3")
FATES = (
    *("swap",) * 6,
    *("refuse", "validation_failed", "download_failed", "slow", "freeze"),
)
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    """What every example starts from: a schema'd database file and registered versions."""

    root: Path
    db_file: Path
    registry_dir: Path
    sha: dict[str, str]


_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        root = Path(tempfile.mkdtemp(prefix="edgefleet-machine-", dir=base))
        db_file = root / "template.db"
        engine = create_engine_for(f"sqlite:///{db_file}")
        create_schema(engine)
        registry = ModelRegistry(session_factory(engine), ArtifactStore(root / "artifacts"))
        sha = register_fake_versions(registry, root / "src", "m", VERSIONS)
        engine.dispose()
        _WORLD = World(root, db_file, root / "artifacts", sha)
    return _WORLD


@dataclass
class SimDevice:
    id: str
    online: bool = True
    frozen: bool = False
    active: SlotInfo | None = None
    previous: SlotInfo | None = None
    last_serial: int = 0
    outcome: Outcome | None = None
    seq: int = 0
    fate: str = "swap"
    work: Manifest | None = None
    due: datetime | None = None
    inbox: list[bytes] = field(default_factory=list)

    def state(self, now: datetime) -> DeviceState:
        self.seq += 1
        progress = None
        if self.work is not None:
            progress = Progress(
                serial=self.work.serial,
                sha256=self.work.artifact.sha256,
                phase=ProgressPhase.DOWNLOADING,
                done_bytes=1,
                total_bytes=3,
            )
        return DeviceState(
            device_id=self.id,
            status=DeviceStatus.UPDATING if self.work else DeviceStatus.SERVING,
            active=self.active,
            previous=self.previous,
            last_serial=self.last_serial,
            updated_at=now,
            last_outcome=self.outcome,
            progress=progress,
            seq=self.seq,
        )

    def finish(self, manifest: Manifest, result: OutcomeResult, now: datetime) -> None:
        self.last_serial = max(self.last_serial, manifest.serial)
        slot = SlotInfo(
            model_id=manifest.model_id,
            version=manifest.version,
            serial=manifest.serial,
            sha256=manifest.artifact.sha256,
            target=manifest.target,
        )
        if result is OutcomeResult.SWAPPED:
            if self.active is None or self.active.sha256 != slot.sha256:
                self.previous = self.active
            self.active = slot
        self.outcome = Outcome(
            serial=manifest.serial,
            sha256=manifest.artifact.sha256,
            result=result,
            reason=f"simulated {result.value}",
            at=now,
        )


class FleetMachine(RuleBasedStateMachine):
    rollouts = Bundle("rollouts")

    def __init__(self) -> None:
        super().__init__()
        w = world()
        self.dir = Path(tempfile.mkdtemp(dir=w.root))
        shutil.copy(w.db_file, self.dir / "db.sqlite")
        self.db = create_engine_for(f"sqlite:///{self.dir / 'db.sqlite'}")
        self.sessions: sessionmaker[Session] = session_factory(self.db)
        self.registry = ModelRegistry(self.sessions, ArtifactStore(w.registry_dir))
        self.sha = w.sha
        self.topics = Topics()
        self.signer = ManifestSigner(
            generate_signing_key(),
            self.topics,
            public_url="http://127.0.0.1:9",
            chunk_size=64 * 1024,
            ttl=TTL,
            urls=ArtifactUrlSigner(b"k" * 32),
            store=ArtifactStore(w.registry_dir),
        )
        self.now = START
        self.engine = self._new_engine()
        self.devices: dict[str, SimDevice] = {}
        self.retained: dict[str, bytes] = {}  # the broker's retained desired state per device
        self.net: list[WireModel] = []  # device -> controller, not yet delivered
        self.stale: dict[str, int] = {}  # device -> seq of its newest lost state
        self.issued: dict[tuple[str, int], str] = {}
        self.max_serial: dict[str, int] = {}
        self.budget: dict[int, datetime] = {}  # rollout id -> when it must have ended
        self.rolled_back_seen: set[int] = set()
        self.completed_checked: set[int] = set()
        self.unfinished = False  # one rollout per device at a time (the planner refuses more)

    def teardown(self) -> None:
        self.db.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _new_engine(self) -> RolloutEngine:
        async def publish(topic: str, payload: bytes, retain: bool) -> None:
            raise AssertionError("the machine publishes the outbox itself")

        return RolloutEngine(
            self.sessions,
            self.registry,
            self.signer,
            self.topics,
            publish,
            offline_after_s=OFFLINE_AFTER.total_seconds(),
            clock=lambda: self.now,
        )

    # --- plumbing ---------------------------------------------------------------------------

    def _send_to_controller(self, messages: list[WireModel]) -> None:
        decoded = []
        for message in messages:
            _, parsed = decode_versioned(encode(message), type(message))
            decoded.append(parsed)
        with self.sessions.begin() as session:
            write_batch(session, decoded, versions={d: 2 for d in self.devices}, now=self.now)

    def _tick(self) -> None:
        """A few engine ticks at the same instant, publishing what each returns."""
        for _ in range(3):
            outbox = self.engine.step_all()
            for item in outbox:
                self._broker_publish(item.topic, item.payload)
            self.engine.mark_published([item.row_id for item in outbox])
        self._observe()

    def _broker_publish(self, topic: str, payload: bytes) -> None:
        device_id = self.topics.parse_device_topic(topic).device_id
        signed = decode(payload, SignedManifest)
        manifest = Manifest.model_validate(signed.manifest)
        key = (device_id, manifest.serial)
        digest = hashlib.sha256(payload).hexdigest()
        if key in self.issued:
            assert self.issued[key] == digest, f"serial {key} issued with two manifests"
        else:
            assert manifest.serial > self.max_serial.get(device_id, 0), f"serial {key} not new"
            self.max_serial[device_id] = manifest.serial
            self.issued[key] = digest
            self._check_not_rolled_back(device_id, manifest)
        self.retained[device_id] = payload
        device = self.devices[device_id]
        if device.online and not device.frozen:
            device.inbox.append(payload)

    def _check_not_rolled_back(self, device_id: str, manifest: Manifest) -> None:
        with self.sessions() as session:
            row = session.scalars(
                select(RolloutDeviceRow).where(
                    RolloutDeviceRow.device_id == device_id,
                    RolloutDeviceRow.serial == manifest.serial,
                )
            ).first()
            assert row is not None, "a published serial has no rollout row"
            rollout = session.get(RolloutRow, row.rollout_id)
            assert rollout is not None
            if rollout.id in self.rolled_back_seen:
                assert manifest.version != rollout.version, (
                    f"rollout {rollout.id} issued {rollout.version} to {device_id} after it "
                    "rolled back"
                )

    def _observe(self) -> None:
        with self.sessions() as session:
            self.unfinished = False
            for rollout in session.scalars(select(RolloutRow)):
                self.unfinished |= rollout.status in UNFINISHED
                if currently_in_test_context():
                    event(f"a rollout reached {rollout.status}")
                    for target in rollout.devices:
                        event(f"a device reached {target.state}")
                if rollout.status in (RolloutStatus.ROLLING_BACK, RolloutStatus.ROLLED_BACK):
                    self.rolled_back_seen.add(rollout.id)
                if rollout.status == RolloutStatus.COMPLETED and rollout.id not in (
                    self.completed_checked
                ):
                    self.completed_checked.add(rollout.id)
                    self._check_completion(rollout)

    def _check_completion(self, rollout: RolloutRow) -> None:
        states = [TargetState(d.state) for d in rollout.devices]
        assert TargetState.ACTIVE in states, "completed with no device converged"
        for target in rollout.devices:
            if target.offline_at_start:
                continue
            assert target.state in {
                TargetState.ACTIVE,
                TargetState.SKIPPED,
                TargetState.SUPERSEDED,
                *FAILURES,
            }, f"completed while {target.device_id} is {target.state}"

    def _device_step(self, device: SimDevice) -> None:
        """Let a live device act on its inbox and its work."""
        if not device.online or device.frozen:
            return
        messages: list[WireModel] = []
        while device.inbox:
            payload = device.inbox.pop(0)
            manifest = Manifest.model_validate(decode(payload, SignedManifest).manifest)
            if manifest.serial <= device.last_serial or (
                device.work is not None and manifest.serial <= device.work.serial
            ):
                continue  # redelivered, or older than what it works on
            if device.active is not None and device.active.sha256 == manifest.artifact.sha256:
                device.work = None
                device.finish(manifest, OutcomeResult.SWAPPED, self.now)  # renewed in place
            else:
                device.work = manifest  # supersedes anything in progress
                delay = {"slow": timedelta(hours=2)}.get(device.fate, timedelta(seconds=30))
                device.due = self.now + delay
                if device.fate == "freeze":
                    device.frozen = True
                    device.online = False  # its keepalive runs out: the will says offline
                    messages.append(device.state(self.now))
                    messages.append(self._will(device))
                    break
            messages.append(device.state(self.now))
        if device.work is not None and device.due is not None and self.now >= device.due:
            result = {
                "refuse": OutcomeResult.REFUSED,
                "validation_failed": OutcomeResult.VALIDATION_FAILED,
                "download_failed": OutcomeResult.DOWNLOAD_FAILED,
            }.get(device.fate, OutcomeResult.SWAPPED)
            device.finish(device.work, result, self.now)
            device.work = device.due = None
            messages.append(device.state(self.now))
        self.net.extend(messages)

    def _will(self, device: SimDevice) -> DeviceState:
        return DeviceState(device_id=device.id, status=DeviceStatus.OFFLINE, updated_at=self.now)

    # --- rules ------------------------------------------------------------------------------

    def _fleet(self) -> None:
        first = self.sha["1"]
        for index in range(DEVICES):
            device = SimDevice(id=f"pi-{index}", last_serial=1)
            device.active = SlotInfo(
                model_id="m", version="1", serial=1, sha256=first, target="onnx-fp32"
            )
            self.devices[device.id] = device
            self._send_to_controller([device_hello(device.id, started_at=self.now)])
            self._send_to_controller([device.state(self.now)])

    @initialize(
        target=rollouts,
        version=st.sampled_from(VERSIONS[1:]),
        waves=st.sampled_from(["1,100%", "1,50%,100%", "2,100%"]),
        on_breach=st.sampled_from(["rollback", "pause"]),
        max_failures=st.sampled_from(["0", "1", "50%"]),
    )
    def fleet_and_first_rollout(
        self, version: str, waves: str, on_breach: str, max_failures: str
    ) -> int:
        self._fleet()
        return self._start(version, waves, on_breach, max_failures)

    @precondition(lambda self: not self.unfinished)
    @rule(
        target=rollouts,
        version=st.sampled_from(VERSIONS[1:]),
        waves=st.sampled_from(["1,100%", "1,50%,100%", "2,100%"]),
        on_breach=st.sampled_from(["rollback", "pause"]),
        max_failures=st.sampled_from(["0", "1", "50%"]),
    )
    def start_rollout(self, version: str, waves: str, on_breach: str, max_failures: str) -> int:
        return self._start(version, waves, on_breach, max_failures)

    def _start(self, version: str, waves: str, on_breach: str, max_failures: str) -> int:
        policy = GatePolicy(
            soak_s=SOAK.total_seconds(),
            install_timeout_s=INSTALL.total_seconds(),
            on_breach=on_breach,  # type: ignore[arg-type]
            max_failures=max_failures,
            min_requests=10**9,  # latency is judged by the e2e tests; here: convergence
        )
        with self.sessions.begin() as session:
            rollout = create_rollout(
                session,
                self.registry,
                model="m",
                version=version,
                selector="*",
                waves=waves,
                policy=policy,
                offline_after=OFFLINE_AFTER,
            )
            rollout.created_at = rollout.updated_at = self.now
            for target in rollout.devices:
                target.updated_at = self.now
            session.flush()
            rollout_id = rollout.id
            phases = len(rollout.waves)
        slack = MAX_STEP * (phases + 1)
        self.budget[rollout_id] = self.now + phases * (INSTALL + SOAK) + INSTALL + slack
        self._tick()
        return rollout_id

    @rule(rollout=rollouts, really=st.integers(0, 15))
    def operator_rolls_back(self, rollout: int, really: int) -> None:
        if really:  # rarely: most rollouts should run their course
            return
        with self.sessions.begin() as session:
            row = session.get(RolloutRow, rollout)
            assert row is not None
            if row.status not in (
                RolloutStatus.RUNNING,
                RolloutStatus.PAUSED,
                RolloutStatus.COMPLETED,
            ):
                return
            try:
                change_status(session, rollout, "rollback", "operator")
            except RolloutConflictError:
                return  # a newer rollout took its devices over: refused, by design
        self.budget[rollout] = max(self.budget[rollout], self.now + INSTALL + 2 * MAX_STEP)
        self._tick()

    @rule(seconds=st.integers(1, int(MAX_STEP.total_seconds())), in_order=st.booleans())
    def time_passes(self, seconds: int, in_order: bool) -> None:
        """The clock moves on; devices work; what they sent arrives in order, or stays queued
        for ``deliver``/``lose_a_message`` to mess with."""
        self.now += timedelta(seconds=seconds)
        for device in self.devices.values():
            self._device_step(device)
        if in_order and self.net:
            batch, self.net = self.net, []
            self._send_to_controller(batch)
            self._note_delivered(batch)
        self._tick()

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver some of what devices sent, in any order, some of it twice."""
        if not self.net:
            return
        order = data.draw(st.permutations(range(len(self.net))))
        count = data.draw(st.integers(1, len(self.net)))
        chosen = sorted(order[:count])
        batch = [self.net[i] for i in order[:count]]
        twice = data.draw(st.lists(st.sampled_from(batch), max_size=3))
        self.net = [m for i, m in enumerate(self.net) if i not in set(chosen)]
        self._send_to_controller(batch + twice)
        self._note_delivered(batch)
        self._tick()

    @rule()
    def deliver_newest_first(self) -> None:
        """Everything queued arrives, in the reverse of the order it was sent."""
        batch, self.net = list(reversed(self.net)), []
        self._send_to_controller(batch)
        self._note_delivered(batch)
        self._tick()

    def _note_delivered(self, batch: list[WireModel]) -> None:
        for message in batch:
            newer = (
                isinstance(message, DeviceState)
                and message.seq is not None
                and message.seq > self.stale.get(message.device_id, message.seq)
            )
            if newer:
                del self.stale[message.device_id]  # a newer state than the lost one made it

    @rule(data=st.data())
    def lose_a_message(self, data: st.DataObject) -> None:
        if not self.net:
            return
        index = data.draw(st.integers(0, len(self.net) - 1))
        lost = self.net.pop(index)
        if isinstance(lost, DeviceState) and lost.seq is not None:
            self.stale[lost.device_id] = max(self.stale.get(lost.device_id, 0), lost.seq)

    @rule(index=st.integers(0, DEVICES - 1), fate=st.sampled_from(FATES))
    def device_fate(self, index: int, fate: str) -> None:
        """How this device will handle the next manifest it gets."""
        self.devices[f"pi-{index}"].fate = fate

    @rule(index=st.integers(0, DEVICES - 1))
    def device_goes_offline(self, index: int) -> None:
        device = self.devices[f"pi-{index}"]
        if device.online:
            device.online = False
            self.net.append(self._will(device))

    @rule(index=st.integers(0, DEVICES - 1))
    def device_comes_back(self, index: int) -> None:
        """Reconnect (a frozen one is thawed): hello, state, and the retained desired state."""
        device = self.devices[f"pi-{index}"]
        if device.online and not device.frozen:
            return
        device.online, device.frozen = True, False
        if device.fate == "freeze":
            device.fate = "swap"
        if device.work is not None and device.due is not None:
            device.due = max(device.due, self.now + timedelta(seconds=30))
        self.net.append(device_hello(device.id, started_at=self.now))
        self.net.append(device.state(self.now))
        if device.id in self.retained:
            device.inbox.append(self.retained[device.id])
        self._device_step(device)

    @rule(index=st.integers(0, DEVICES - 1))
    def device_rolls_itself_back(self, index: int) -> None:
        """The device's post-swap health watch fails: it swaps its previous slot back."""
        device = self.devices[f"pi-{index}"]
        if not device.online or device.frozen or device.active is None or device.previous is None:
            return
        left, back = device.active, device.previous
        device.active, device.previous = back, None
        device.outcome = Outcome(
            serial=left.serial,
            sha256=left.sha256,
            result=OutcomeResult.ROLLED_BACK,
            reason="health watch: error rate",
            at=self.now,
            from_serial=left.serial,
            to_serial=back.serial,
        )
        self.net.append(device.state(self.now))

    @rule()
    def controller_restarts(self) -> None:
        """A new engine on the same database; on connect it republishes every desired state and
        the broker hands it every device's retained state (the newest, whatever was lost)."""
        self.engine = self._new_engine()
        self.engine.mark_all_unpublished()
        # An offline device's retained state is its will, which names no slots: the controller
        # learns what such a device runs only when it comes back.
        live = [d for d in self.devices.values() if d.online]
        self._send_to_controller([d.state(self.now) for d in live])
        for device in live:
            self.stale.pop(device.id, None)
        self._tick()

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def every_rollout_ends_in_time_with_a_reason(self) -> None:
        with self.sessions() as session:
            for rollout in session.scalars(select(RolloutRow)):
                if self.now > self.budget[rollout.id]:
                    states = [(d.device_id, d.state) for d in rollout.devices]
                    assert rollout.status in ENDED, (
                        f"rollout {rollout.id} still {rollout.status} at {self.now}, budget "
                        f"{self.budget[rollout.id]}: {states}"
                    )
                if rollout.status in ENDED:
                    assert rollout.reason
                for target in rollout.devices:
                    TargetState(target.state)
                    if target.state in FAILURES:
                        assert target.reason, f"{target.device_id} {target.state} without reason"

    @invariant()
    def an_unconverged_device_fails_at_its_deadline(self) -> None:
        """Online or not (unless offline since before it was sent anything), a device that has
        not converged by its install deadline is no longer counted as in flight."""
        with self.sessions() as session:
            for target in session.scalars(
                select(RolloutDeviceRow).where(
                    RolloutDeviceRow.state.in_([TargetState.SENT, TargetState.REVERTING]),
                    RolloutDeviceRow.offline_at_start.is_(False),
                )
            ):
                current = self.max_serial.get(target.device_id) == target.serial
                if current and target.deadline_at is not None:
                    deadline = target.deadline_at.replace(tzinfo=UTC)
                    assert self.now < deadline, (
                        f"{target.device_id} still {target.state} at {self.now}, past its "
                        f"deadline {deadline}"
                    )

    @invariant()
    def retained_desired_states_never_expire(self) -> None:
        """Re-signed before they expire, so a device away for longer than a manifest lives
        still finds a valid desired state when it comes back."""
        for device_id, payload in self.retained.items():
            manifest = Manifest.model_validate(decode(payload, SignedManifest).manifest)
            assert manifest.expires_at > self.now, f"{device_id}'s desired state expired"

    @invariant()
    def recorded_active_matches_the_device(self) -> None:
        quiet = {
            d.id
            for d in self.devices.values()
            if d.online and not any(m.device_id == d.id for m in self.net)
        }
        with self.sessions() as session:
            for device_id in quiet - set(self.stale):
                row = session.get(DeviceRow, device_id)
                assert row is not None
                own = self.devices[device_id].active
                recorded = row.active
                assert (recorded or {}).get("serial") == (own.serial if own else None), device_id
                assert (recorded or {}).get("sha256") == (own.sha256 if own else None), device_id


FleetMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_desired_states_are_renewed_with_a_new_serial_for_the_same_artifact() -> None:
    machine = FleetMachine()
    try:
        machine._fleet()
        rollout_id = machine._start("2", "1,100%", "rollback", "0")
        for _ in range(6):
            machine.time_passes(300, in_order=True)
        with machine.sessions() as session:
            rollout = session.get(RolloutRow, rollout_id)
            assert rollout is not None
            assert rollout.status == RolloutStatus.COMPLETED, rollout.reason
        first = {d.id: d.active.serial for d in machine.devices.values() if d.active}
        while machine.now < START + TTL:
            machine.time_passes(600, in_order=True)
            machine.retained_desired_states_never_expire()
        assert machine.engine.manifests_renewed >= DEVICES
        for device in machine.devices.values():
            assert device.active is not None
            assert device.active.version == "2"
            assert device.active.serial > first[device.id]  # renewed, same artifact
        with machine.sessions() as session:
            states = {d.state for d in session.scalars(select(RolloutDeviceRow))}
            assert states == {TargetState.ACTIVE}
        machine.recorded_active_matches_the_device()
    finally:
        machine.teardown()


# Shrinking a failure can take minutes: allow it, so a failure shows its steps, not a timeout.
test_fleet_truth = pytest.mark.timeout(900)(pytest.mark.slow(FleetMachine.TestCase))
