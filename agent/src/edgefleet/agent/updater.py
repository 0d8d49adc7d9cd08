"""The desired-state loop: verify, fetch, load, validate, swap, watch, keep or roll back.

Concurrency: one named worker thread consumes a bounded queue of raw desired-state and command
payloads (filled by MQTT callbacks, which never block). Only this thread changes the slots and
swaps models; boot runs before it starts. Nothing is loaded before :func:`verify_manifest`
returned a :class:`VerifiedManifest`, and :meth:`Updater._install` accepts nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.download import ArtifactDownloader
from edgefleet.agent.errors import (
    ModelLoadError,
    SupersededError,
    UnsupportedArtifactError,
    ValidationFailedError,
)
from edgefleet.agent.fetch import MqttChunkFetcher
from edgefleet.agent.health import HealthWatch, RollbackVerdict
from edgefleet.agent.memory import lower_thread_priority, release_free_memory
from edgefleet.agent.metrics import MetricsRegistry
from edgefleet.agent.report import Reporter
from edgefleet.agent.runtimes import check_runtime_allowed, load_runtime
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.slots import Slot, SlotStore, slot_info
from edgefleet.agent.swap import ActiveModel, LoadedModel
from edgefleet.agent.validation import smoke_inputs, tensor_array, validate
from edgefleet.shared.errors import DownloadError, IntegrityError, ReplayError, WireFormatError
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import Manifest, SignedManifest
from edgefleet.shared.messages import Command, CommandType, DeviceStatus, EventType
from edgefleet.shared.signing import VerifiedManifest, canonical_json, verify_manifest
from edgefleet.shared.wire import decode

log = logging.getLogger(__name__)

WorkKind = Literal["desired", "command", "wake"]


def manifest_digest(signed: SignedManifest) -> str:
    return hashlib.sha256(canonical_json(signed.model_dump(mode="json"))).hexdigest()


class Updater:
    """Owns the slots and the active model's lifecycle."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        controller_key: Ed25519PublicKey,
        store: SlotStore,
        active: ActiveModel,
        metrics: MetricsRegistry,
        reporter: Reporter,
        mqtt_fetcher: MqttChunkFetcher,
    ) -> None:
        self.settings = settings
        self.controller_key = controller_key
        self.store = store
        self.active = active
        self.metrics = metrics
        self.reporter = reporter
        self.work: queue.Queue[tuple[WorkKind, bytes]] = queue.Queue(settings.queue_size)
        self.stop_event = threading.Event()
        self.downloader = ArtifactDownloader(
            settings,
            store.downloads_dir,
            mqtt=mqtt_fetcher,
            reporter=reporter,
            stop=self.stop_event,
        )
        self.status = DeviceStatus.STARTING
        self.detail: str | None = None
        self.watch: HealthWatch | None = None
        self._updating_to: Manifest | None = None
        self._seen_commands: deque[str] = deque(maxlen=256)
        self._deferred: deque[tuple[WorkKind, bytes]] = deque()
        self._thread: threading.Thread | None = None

    # -- queue side (any thread, never blocks) ----------------------------------------------
    def submit(self, kind: WorkKind, payload: bytes) -> None:
        try:
            self.work.put_nowait((kind, payload))
        except queue.Full:
            log.warning("desired-state queue full; dropping a %s message", kind)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"edgefleet-agent-updater-{self.settings.device_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.submit("wake", b"")  # end the queue wait now, not at its timeout
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self, wait: float) -> tuple[WorkKind | None, bytes]:
        if self._deferred:
            return self._deferred.popleft()
        try:
            return self.work.get(timeout=wait)
        except queue.Empty:
            return None, b""

    def _while_busy(self) -> None:
        """Called during a download: act on commands and health now, keep manifests for later."""
        while True:
            try:
                kind, payload = self.work.get_nowait()
            except queue.Empty:
                break
            if kind == "command":
                self.handle_command(payload)
                continue
            self._deferred.append((kind, payload))
            newer = self._newer_serial(payload) if kind == "desired" else None
            if newer is not None and self._updating_to is not None:
                raise SupersededError(self._updating_to.serial, newer)
        if self.watch is not None:
            self.check_health()

    def _newer_serial(self, payload: bytes) -> int | None:
        """The serial of ``payload`` if it is a verified manifest newer than the one in progress."""
        if self._updating_to is None:
            return None
        try:
            verified = verify_manifest(
                decode(payload, SignedManifest),
                self.controller_key,
                device_id=self.settings.device_id,
                last_serial=self._updating_to.serial,
            )
        except (IntegrityError, WireFormatError):
            return None  # reported when it is processed in turn
        return verified.manifest.serial

    def _run(self) -> None:
        lower_thread_priority()  # loading and validating must not starve requests being served
        while not self.stop_event.is_set():
            wait = self.settings.health_check_interval_s if self.watch else 0.5
            kind, payload = self._next(wait)
            try:
                if kind == "desired":
                    self.handle_desired(payload)
                elif kind == "command":
                    self.handle_command(payload)
                if self.watch is not None:
                    self.check_health()
            except Exception as e:
                log.exception("desired-state loop error")
                self.reporter.event(EventType.ERROR, reason=f"{type(e).__name__}: {e}")

    # -- state ------------------------------------------------------------------------------
    def publish_state(self) -> None:
        store = self.store
        self.reporter.publish_state(
            self.reporter.state_message(
                self.status,
                active=store.active.info if store.active else None,
                previous=store.previous.info if store.previous else None,
                last_serial=store.last_serial,
                updating_to=slot_info(self._updating_to) if self._updating_to else None,
                detail=self.detail,
            )
        )

    def _set_status(self, status: DeviceStatus, detail: str | None = None) -> None:
        self.status, self.detail = status, detail
        self.publish_state()

    def _settled(self, detail: str | None = None) -> None:
        self._updating_to = None
        self._set_status(DeviceStatus.SERVING if self.active.current else DeviceStatus.IDLE, detail)

    # -- boot -------------------------------------------------------------------------------
    def boot(self) -> None:
        """Load the active slot, or the previous one if it fails; report what happened."""
        failures: list[str] = []
        while self.store.active is not None:
            slot = self.store.active
            try:
                model = self._load_slot(slot)
            except (IntegrityError, OSError) as e:
                failures.append(f"{slot.info.version}: {e}")
                self.reporter.event(
                    EventType.SLOT_FALLBACK,
                    manifest=slot.manifest,
                    reason=f"active slot {slot.info.model_id} {slot.info.version} failed to "
                    f"load ({e}); falling back to the previous slot",
                )
                self.store.drop_active()
                continue
            self.active.swap(model)
            self.metrics.reset_version(model.key)
            how = "fell back to" if failures else "serving"
            self.reporter.event(
                EventType.BOOTED,
                manifest=slot.manifest,
                reason=f"{how} {slot.info.model_id} {slot.info.version} serial {slot.info.serial}",
                figures={"failed_slots": float(len(failures))},
            )
            self.status, self.detail = DeviceStatus.SERVING, "; ".join(failures) or None
            return
        reason = "no model installed" + (
            f"; slots failed: {'; '.join(failures)}" if failures else ""
        )
        self.reporter.event(EventType.BOOTED, reason=reason)
        self.status, self.detail = DeviceStatus.IDLE, reason if failures else None

    def _load_slot(self, slot: Slot) -> LoadedModel:
        """Re-check an installed artifact, load it and warm it up.

        Raises:
            IntegrityError: the file changed on disk, the runtime rejects it, or it fails.
        """
        self.store.check_artifact(slot)
        runtime = load_runtime(slot.path, slot.manifest, threads=self.settings.inference_threads)
        model = LoadedModel(slot.info, slot.manifest.signature, runtime)
        golden = slot.manifest.golden
        probe = (
            {n: tensor_array(t) for n, t in golden.pairs[0].inputs.items()}
            if golden
            else smoke_inputs(slot.manifest.signature)
        )
        try:
            for _ in range(self.settings.warmup_runs):
                runtime.run(probe)
        except Exception:
            runtime.close()
            raise
        return model

    # -- desired state -----------------------------------------------------------------------
    def handle_desired(self, payload: bytes) -> None:
        """Process one desired-state payload to its end (swap, refusal or a failed download)."""
        if not payload:
            return  # a cleared retained message
        try:
            signed = decode(payload, SignedManifest)
        except WireFormatError as e:
            log.warning("dropping a malformed desired-state payload: %s", e)
            return
        digest = manifest_digest(signed)
        try:
            verified = verify_manifest(
                signed,
                self.controller_key,
                device_id=self.settings.device_id,
                last_serial=self.store.last_serial,
            )
        except ReplayError as e:
            if digest == self.store.last_manifest_sha256:
                log.debug("desired state redelivered; already handled")
                return
            self.reporter.event(
                EventType.MANIFEST_REFUSED,
                reason=str(e),
                figures={"serial": float(e.serial), "last_serial": float(e.last_serial)},
            )
            return
        except (IntegrityError, WireFormatError) as e:
            self.reporter.event(EventType.MANIFEST_REFUSED, reason=f"{type(e).__name__}: {e}")
            return
        self._apply(verified, signed, digest)

    def _apply(self, verified: VerifiedManifest, signed: SignedManifest, digest: str) -> None:
        manifest = verified.manifest
        self.reporter.event(EventType.MANIFEST_RECEIVED, manifest=manifest)
        self._updating_to = manifest
        self._set_status(DeviceStatus.UPDATING)
        try:
            if manifest.artifact.size > self.settings.max_artifact_bytes:
                raise UnsupportedArtifactError(
                    manifest.target,
                    f"artifact of {manifest.artifact.size} bytes exceeds the limit of "
                    f"{self.settings.max_artifact_bytes}",
                )
            check_runtime_allowed(manifest, self.settings.runtimes)
            if manifest.runtime == "edgetpu":
                from edgefleet.agent.runtimes.edgetpu import load_edgetpu_delegate

                load_edgetpu_delegate()  # refuse before downloading what cannot run here
            path = self._fetch(manifest)
            self._install(verified, signed, path, digest)
        except SupersededError as e:
            self.reporter.event(EventType.DOWNLOAD_FAILED, manifest=manifest, reason=str(e))
            self._settled(str(e))
        except DownloadError as e:
            self.reporter.event(EventType.DOWNLOAD_FAILED, manifest=manifest, reason=str(e))
            self._settled(f"download of serial {manifest.serial} failed: {e}")
            return
        except UnsupportedArtifactError as e:
            self._refuse(manifest, digest, EventType.MANIFEST_REFUSED, str(e))
        except ModelLoadError as e:
            self._refuse(manifest, digest, EventType.LOAD_FAILED, str(e))
        except ValidationFailedError as e:
            self._refuse(manifest, digest, EventType.VALIDATION_FAILED, e.reason, e.figures)
        except IntegrityError as e:
            self._refuse(manifest, digest, EventType.VERIFY_FAILED, f"{type(e).__name__}: {e}")
        except OSError as e:  # disk full, permissions: not the manifest's fault, retry later
            self.reporter.event(EventType.ERROR, manifest=manifest, reason=f"local I/O error: {e}")
            self._settled(f"serial {manifest.serial} hit a local I/O error: {e}")
        else:
            self._settled()

    def _refuse(
        self,
        manifest: Manifest,
        digest: str,
        kind: EventType,
        reason: str,
        figures: dict[str, float] | None = None,
    ) -> None:
        self.reporter.event(kind, manifest=manifest, reason=reason, figures=figures)
        self.store.record_outcome(manifest.serial, digest)
        self.downloader.discard(manifest)
        self._settled(f"refused serial {manifest.serial}: {reason}")

    def _fetch(self, manifest: Manifest) -> Path:
        """The artifact on disk: one we still hold (if its bytes still hash right), or a download.

        Raises:
            DownloadError, HashMismatchError, LengthMismatchError: see ArtifactDownloader.
        """
        installed = self.store.artifacts_dir / manifest.artifact.sha256
        if installed.exists():
            if sha256_file(installed) == manifest.artifact.sha256:
                return installed
            installed.unlink()  # corrupted on disk: fetch it again
        return self.downloader.download(manifest, idle=self._while_busy)

    def _install(
        self, verified: VerifiedManifest, signed: SignedManifest, path: Path, digest: str
    ) -> None:
        """Load, validate, persist and swap in a verified artifact.

        Raises:
            ModelLoadError, UnsupportedArtifactError: the runtime cannot load it.
            ValidationFailedError: it failed validation (the old model keeps serving).
        """
        manifest = verified.manifest
        runtime = load_runtime(path, manifest, threads=self.settings.inference_threads)
        try:
            report = validate(
                runtime,
                manifest,
                warmup_runs=self.settings.warmup_runs,
                timed_runs=self.settings.validation_timed_runs,
            )
        except Exception:
            runtime.close()
            raise
        slot = self.store.install(verified, signed, path, digest)
        model = LoadedModel(slot.info, manifest.signature, runtime)
        self.metrics.reset_version(model.key)
        old = self.active.swap(model)
        if old is not None and old.key != model.key:
            self.watch = HealthWatch(
                new=model.key,
                previous=old.key,
                policy=manifest.health,
                baseline=self.metrics.since_load(old.key),
                started=time.monotonic(),
            )
        self.reporter.event(EventType.SWAPPED, manifest=manifest, figures=report.figures())
        del old
        release_free_memory()

    # -- health and rollback -----------------------------------------------------------------
    def check_health(self) -> None:
        watch = self.watch
        if watch is None:
            return
        verdict = watch.check(self.metrics.since_load(watch.new), time.monotonic())
        if verdict is True:
            log.info("post-swap watch of %s passed", watch.new)
            self.watch = None
        elif isinstance(verdict, RollbackVerdict):
            self.watch = None
            self.roll_back(verdict.reason, verdict.figures)

    def roll_back(self, reason: str, figures: dict[str, float] | None = None) -> bool:
        """Swap the previous slot back in; report ``rolled_back`` with the figures."""
        previous = self.store.previous
        current = self.store.active
        if previous is None:
            self.reporter.event(
                EventType.ERROR, reason=f"cannot roll back ({reason}): no previous slot"
            )
            return False
        try:
            model = self._load_slot(previous)
        except (IntegrityError, OSError) as e:
            self.reporter.event(
                EventType.ERROR,
                manifest=previous.manifest,
                reason=f"cannot roll back ({reason}): previous slot failed: {e}",
            )
            return False
        self.store.roll_back()
        self.metrics.reset_version(model.key)
        self.active.swap(model)
        self.watch = None
        self.reporter.event(
            EventType.ROLLED_BACK,
            manifest=previous.manifest,
            reason=f"rolled back from {current.info.version if current else '?'} to "
            f"{previous.info.version}: {reason}",
            figures=figures,
        )
        if self._updating_to is None:
            self._settled(f"rolled back: {reason}")
        else:  # a download is under way: stay "updating", with the new active slot
            self._set_status(DeviceStatus.UPDATING, f"rolled back: {reason}")
        return True

    def handle_command(self, payload: bytes) -> None:
        """Process one command once (redeliveries of the same ``command_id`` change nothing)."""
        try:
            command = decode(payload, Command)
        except WireFormatError as e:
            log.warning("dropping a malformed command: %s", e)
            return
        if command.device_id != self.settings.device_id:
            log.warning("dropping a command for %s", command.device_id)
            return
        command_id = str(command.command_id)
        if command_id in self._seen_commands:
            return
        self._seen_commands.append(command_id)
        if command.type == CommandType.ROLLBACK:
            done = self.roll_back(f"commanded by the controller: {command.reason or 'no reason'}")
            self.reporter.event(
                EventType.COMMAND_DONE,
                reason=f"rollback {command_id} {'done' if done else 'not possible'}",
                figures={"ok": 1.0 if done else 0.0},
            )
