"""The desired-state loop: verify, fetch, load, validate, swap, watch, keep or roll back.

Concurrency: one named worker thread consumes a bounded queue of raw desired-state and command
payloads (filled by MQTT callbacks, which never block). Only this thread changes the slots and
swaps models; boot runs before it starts. Nothing is loaded before :func:`verify_manifest`
returned a :class:`VerifiedManifest`, and :meth:`SlotKeeper.install` accepts nothing else.

Every manifest that passes verification (or fails only its expiry) ends in one final outcome,
recorded with the serial in ``slots.json`` and reported in the retained state; only a newer
manifest (superseded) or a shutdown leaves one without. Local I/O failures are retried until
``io_retry_limit_s`` (see :mod:`edgefleet.agent.io_retry`), with commands obeyed meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edgefleet.agent.commands import CommandGate, CommandRefusal
from edgefleet.agent.download import ArtifactDownloader, holds_artifact
from edgefleet.agent.errors import (
    ModelLoadError,
    StoppingError,
    StorageError,
    SupersededError,
    TooSlowError,
    UnsupportedArtifactError,
    ValidationFailedError,
)
from edgefleet.agent.fetch import MqttChunkFetcher
from edgefleet.agent.intake import Dropped, Ignored, Refused, read_desired
from edgefleet.agent.io_retry import LocalIoError, LocalIoRetry
from edgefleet.agent.keeper import SlotKeeper, check_runnable
from edgefleet.agent.memory import lower_thread_priority
from edgefleet.agent.metrics import MetricsRegistry
from edgefleet.agent.outcome import outcome_of, reason_with_figures
from edgefleet.agent.progress import ProgressTracker
from edgefleet.agent.report import Reporter
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.slots import SlotStore, slot_info
from edgefleet.agent.swap import ActiveModel
from edgefleet.shared.ed25519 import PublicKey
from edgefleet.shared.errors import DownloadError, IntegrityError, WireFormatError
from edgefleet.shared.manifest import GoldenSet, Manifest, SignedManifest
from edgefleet.shared.messages import (
    CommandType,
    DesiredError,
    DeviceStatus,
    EventType,
    OutcomeResult,
    ProgressPhase,
)
from edgefleet.shared.signing import VerifiedManifest, verify_manifest
from edgefleet.shared.wire import decode

log = logging.getLogger(__name__)

WorkKind = Literal["desired", "command", "wake"]


class Updater:
    """Owns the slots and the active model's lifecycle."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        controller_key: PublicKey,
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
        self.progress = ProgressTracker(settings.progress_interval_s)
        self.io_retry = LocalIoRetry(settings, wait=self._wait, on_retry=self._on_io_retry)
        self.keeper = SlotKeeper(
            settings, store=store, active=active, metrics=metrics, reporter=reporter
        )
        self.status = DeviceStatus.STARTING
        self.detail: str | None = None
        self._updating_to: Manifest | None = None
        self.desired_error: DesiredError | None = None  # the last payload dropped unread
        self.commands = CommandGate(
            settings.data_dir / "command-serial",
            controller_key,
            settings.device_id,
            durable=settings.durable_writes,
        )
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
        """Called while a manifest is in hand: act on commands and health now, keep manifests
        for later.

        Raises:
            SupersededError: a newer verified manifest arrived (it is processed next).
        """
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
        self.check_health()

    def _while_downloading(self) -> None:
        """:meth:`_while_busy`, and download progress in the state every so often.

        Raises:
            SupersededError: as :meth:`_while_busy`.
        """
        self._while_busy()
        if self.progress.downloaded(self.downloader.done_bytes()):
            self.publish_state()

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
            wait = self.settings.health_check_interval_s if self.keeper.watch else 0.5
            kind, payload = self._next(wait)
            try:
                if kind == "desired":
                    self.handle_desired(payload)
                elif kind == "command":
                    self.handle_command(payload)
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
                last_outcome=store.last_outcome,
                progress=self.progress.current,
                desired_error=self.desired_error,
            )
        )

    def _set_status(self, status: DeviceStatus, detail: str | None = None) -> None:
        self.status, self.detail = status, detail
        self.publish_state()

    def _settled(self, detail: str | None = None) -> None:
        self._updating_to = None
        self.progress.clear()
        self._set_status(DeviceStatus.SERVING if self.active.current else DeviceStatus.IDLE, detail)

    # -- boot -------------------------------------------------------------------------------
    def boot(self) -> None:
        """Load the active slot, or the previous one if it fails; report what happened."""
        self.status, self.detail = self.keeper.boot()

    # -- desired state -----------------------------------------------------------------------
    def handle_desired(self, payload: bytes) -> None:
        """Process one desired-state payload to its end: an outcome, or a newer manifest."""
        store = self.store
        intake = read_desired(
            payload,
            self.controller_key,
            device_id=self.settings.device_id,
            last_serial=store.last_serial,
            last_digest=store.last_manifest_sha256,
            max_bytes=self.settings.max_desired_bytes,
        )
        if isinstance(intake, Ignored):
            log.debug("ignoring a desired-state payload: %s", intake.why)
        elif isinstance(intake, Dropped):
            self.reporter.event(EventType.MANIFEST_REFUSED, reason=intake.reason)
            self.desired_error = DesiredError(
                payload_sha256=intake.payload_sha256,
                size=intake.size,
                reason=intake.reason,
                at=datetime.now(UTC),
            )
            self.publish_state()  # the controller matches the digest to what it published
        elif isinstance(intake, Refused):
            self.reporter.event(
                EventType.MANIFEST_REFUSED,
                manifest=intake.final,
                reason=intake.reason,
                figures=intake.figures,
            )
            if intake.final is not None and intake.digest is not None:
                self._record(intake.final, intake.digest, OutcomeResult.REFUSED, intake.reason)
                self.publish_state()
        else:
            self._apply(intake.verified, intake.signed, intake.digest)

    def _apply(self, verified: VerifiedManifest, signed: SignedManifest, digest: str) -> None:
        manifest = verified.manifest
        renewal = self.keeper.is_running(manifest)
        renewed = f"renewed: already running {manifest.artifact.sha256[:12]}"
        self.reporter.event(
            EventType.MANIFEST_RECEIVED, manifest=manifest, reason=renewed if renewal else None
        )
        self._updating_to = manifest
        self.store.in_progress = manifest.artifact.sha256
        try:
            if renewal:
                swapped = outcome_of(manifest, OutcomeResult.SWAPPED, renewed)
                self.io_retry.run(lambda: self.store.renew(verified, signed, digest, swapped))
            else:
                check_runnable(manifest, self.settings)  # before anything is downloaded
                self.progress.begin(manifest)
                self._set_status(DeviceStatus.UPDATING)
                self.io_retry.run(lambda: self._fetch_and_install(verified, signed, digest))
        except StoppingError:
            log.info("stopping with serial %d in hand; the next start resumes it", manifest.serial)
        except SupersededError as e:
            self.reporter.event(EventType.DOWNLOAD_FAILED, manifest=manifest, reason=str(e))
            self._settled(str(e))
        except DownloadError as e:
            self._finish(
                manifest, digest, OutcomeResult.DOWNLOAD_FAILED, EventType.DOWNLOAD_FAILED,
                str(e), detail="download failed", discard=False,
            )  # fmt: skip
        except (StorageError, OSError) as e:  # only once io_retry_limit_s is spent
            self._finish(
                manifest, digest, OutcomeResult.IO_ERROR, EventType.ERROR,
                f"local I/O error for {self.settings.io_retry_limit_s:g}s: {e}",
                detail="local I/O failed",
            )  # fmt: skip
        except UnsupportedArtifactError as e:
            self._refuse(manifest, digest, EventType.MANIFEST_REFUSED, str(e))
        except ModelLoadError as e:
            self._refuse(manifest, digest, EventType.LOAD_FAILED, str(e))
        except TooSlowError as e:
            self._finish(
                manifest, digest, OutcomeResult.TOO_SLOW, EventType.VALIDATION_FAILED,
                e.reason, e.figures, detail="too slow",
            )  # fmt: skip
        except ValidationFailedError as e:
            self._finish(
                manifest, digest, OutcomeResult.VALIDATION_FAILED, EventType.VALIDATION_FAILED,
                e.reason, e.figures, detail="refused",
            )  # fmt: skip
        except IntegrityError as e:
            self._refuse(manifest, digest, EventType.VERIFY_FAILED, f"{type(e).__name__}: {e}")
        else:
            self._settled()
        finally:
            self.store.in_progress = None

    def _refuse(self, manifest: Manifest, digest: str, kind: EventType, reason: str) -> None:
        self._finish(manifest, digest, OutcomeResult.REFUSED, kind, reason, detail="refused")

    def _finish(
        self,
        manifest: Manifest,
        digest: str,
        result: OutcomeResult,
        kind: EventType,
        reason: str,
        figures: dict[str, float] | None = None,
        *,
        detail: str,
        discard: bool = True,
    ) -> None:
        """End a manifest with a final outcome other than ``swapped``: event, record, state."""
        self.reporter.event(kind, manifest=manifest, reason=reason, figures=figures)
        if discard:
            self.downloader.discard(manifest)
        self._record(manifest, digest, result, reason_with_figures(reason, figures))
        self._settled(f"{detail} serial {manifest.serial}: {reason}")

    def _record(self, manifest: Manifest, digest: str, result: OutcomeResult, reason: str) -> None:
        outcome = outcome_of(manifest, result, reason)
        if not self.store.record_outcome(manifest.serial, digest, outcome):
            self.reporter.event(
                EventType.ERROR,
                manifest=manifest,
                reason=f"the {result.value} outcome of serial {manifest.serial} could not be "
                "saved; it holds until the agent restarts",
            )

    def _on_io_retry(self, error: LocalIoError, attempt: int, delay: float) -> None:
        if self.progress.current is None and self._updating_to is not None:
            self.progress.begin(self._updating_to, ProgressPhase.INSTALLING)  # a renewal
        self.progress.retrying(str(error))
        self._set_status(DeviceStatus.UPDATING, f"local I/O error, retrying: {error}")
        self.reporter.event(
            EventType.ERROR,
            manifest=self._updating_to,
            reason=f"local I/O error, retry {attempt} in {delay:.1f}s: {error}",
            figures={"attempt": float(attempt), "delay_s": delay},
        )

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` between local I/O retries while acting on commands and health.

        Raises:
            SupersededError: a newer manifest arrived.
            StoppingError: the agent is stopping.
        """
        until = time.monotonic() + seconds
        while True:
            self._while_busy()
            remaining = until - time.monotonic()
            if remaining <= 0:
                self.progress.resume()  # the next attempt starts
                return
            if self.stop_event.wait(min(self.settings.idle_every_s, remaining)):
                raise StoppingError("the agent is stopping")

    def _fetch_and_install(
        self, verified: VerifiedManifest, signed: SignedManifest, digest: str
    ) -> None:
        """Raises: see :meth:`_fetch`, :meth:`_fetch_golden` and :meth:`SlotKeeper.install`."""
        golden = self._fetch_golden(verified.manifest)
        path = self._fetch(verified.manifest)
        self.progress.enter(ProgressPhase.INSTALLING, done_bytes=verified.manifest.artifact.size)
        self.publish_state()
        self.keeper.install(verified, signed, path, digest, golden, stop=self.stop_event)

    def _fetch_golden(self, manifest: Manifest) -> GoldenSet | None:
        """The golden set a schema-2 manifest names as a file: fetched like the artifact (its
        sha256 and size are signed), read, and the download dropped.

        Raises:
            UnsupportedArtifactError: the verified file is not a golden set.
            DownloadError, StoppingError, StorageError, HashMismatchError,
            LengthMismatchError: see ArtifactDownloader.download.
        """
        ref = manifest.golden_ref
        if ref is None:
            return None
        carrier = manifest.model_copy(update={"artifact": ref})  # the same fetch, other bytes
        path = self._fetch(carrier)
        try:
            return GoldenSet.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise UnsupportedArtifactError(
                manifest.target, f"its golden file {ref.sha256[:12]} is not a golden set: {e}"
            ) from e
        finally:
            self.downloader.discard(carrier)

    def _fetch(self, manifest: Manifest) -> Path:
        """The artifact on disk: one we still hold or finished downloading, or a download.

        A crash between the download's finish and the install, or between the install's
        rename and its slot write, leaves a file found here: nothing is downloaded again.

        Raises:
            DownloadError, StoppingError, StorageError, HashMismatchError,
            LengthMismatchError: see ArtifactDownloader.download.
            OSError: a file we hold could not be read.
        """
        installed = self.store.artifacts_dir / manifest.artifact.sha256
        if holds_artifact(installed, manifest):
            return installed
        finished = self.downloader.finished(manifest)
        if finished is not None:
            return finished
        return self.downloader.download(manifest, idle=self._while_downloading)

    # -- health and rollback -----------------------------------------------------------------
    def check_health(self) -> None:
        reason = self.keeper.check_health()
        if reason is not None:
            self._after_rollback(reason)

    def roll_back(self, reason: str) -> bool:
        """Swap the previous slot back in (see :meth:`SlotKeeper.roll_back`) and say so."""
        done = self.keeper.roll_back(reason)
        if done:
            self._after_rollback(reason)
        return done

    def _after_rollback(self, reason: str) -> None:
        if self._updating_to is None:
            self._settled(f"rolled back: {reason}")
        else:  # a manifest is in hand: stay "updating", with the new active slot
            self._set_status(DeviceStatus.UPDATING, f"rolled back: {reason}")

    def handle_command(self, payload: bytes) -> None:
        """Obey one command if it is signed, for this device, unexpired and not a replay
        (see :class:`CommandGate`); otherwise say why in a ``command_refused`` event."""
        admitted = self.commands.admit(payload)
        if isinstance(admitted, CommandRefusal):
            log.warning("refusing a command: %s", admitted.reason)
            self.reporter.event(
                EventType.COMMAND_REFUSED,
                reason=admitted.reason,
                figures={"last_command_serial": float(self.commands.last_serial)},
            )
            return
        command = admitted.command
        if command.type == CommandType.ROLLBACK:
            done = self.roll_back(f"commanded by the controller: {command.reason or 'no reason'}")
            self.reporter.event(
                EventType.COMMAND_DONE,
                reason=f"rollback {command.command_id} {'done' if done else 'not possible'}",
                figures={"ok": 1.0 if done else 0.0, "command_serial": float(admitted.serial)},
            )
