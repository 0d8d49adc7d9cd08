"""The active model and the slots behind it: boot, swap in, watch health, roll back.

Runs on the updater thread (boot before it starts). Every change of the active model goes
through here, after the slots on disk say so, and is reported as an event; the caller
publishes the state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgefleet.agent.errors import NoModelError, UnsupportedArtifactError
from edgefleet.agent.health import HealthWatch, RollbackVerdict
from edgefleet.agent.memory import release_free_memory
from edgefleet.agent.metrics import MetricsRegistry
from edgefleet.agent.outcome import outcome_of, reason_with_figures, rolled_back
from edgefleet.agent.report import Reporter
from edgefleet.agent.runtimes import ModelRuntime, check_runtime_allowed, load_runtime
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.slots import Slot, SlotStore
from edgefleet.agent.swap import ActiveModel, LoadedModel
from edgefleet.agent.validation import (
    Baseline,
    ValidationReport,
    smoke_inputs,
    tensor_array,
    validate,
)
from edgefleet.shared.errors import IntegrityError
from edgefleet.shared.manifest import GoldenSet, Manifest, SignedManifest
from edgefleet.shared.messages import DeviceStatus, EventType, OutcomeResult
from edgefleet.shared.signing import VerifiedManifest

log = logging.getLogger(__name__)


def check_runnable(manifest: Manifest, settings: AgentSettings) -> None:
    """Refuse before downloading what cannot run here.

    Raises:
        UnsupportedArtifactError: too big, a runtime this agent does not use, or no Edge TPU.
    """
    if manifest.artifact.size > settings.max_artifact_bytes:
        raise UnsupportedArtifactError(
            manifest.target,
            f"artifact of {manifest.artifact.size} bytes exceeds the limit of "
            f"{settings.max_artifact_bytes}",
        )
    check_runtime_allowed(manifest, settings.runtimes)
    if manifest.runtime == "edgetpu":
        from edgefleet.agent.runtimes.edgetpu import load_edgetpu_delegate

        load_edgetpu_delegate()


def load_slot(slot: Slot, settings: AgentSettings) -> LoadedModel:
    """Re-check an installed artifact, load it and warm it up.

    Raises:
        IntegrityError: the file changed on disk, the runtime rejects it, or it fails.
        OSError: the file could not be read.
    """
    SlotStore.check_artifact(slot)
    runtime = load_runtime(slot.path, slot.manifest, threads=settings.inference_threads)
    model = LoadedModel(slot.info, slot.manifest.signature, runtime)
    golden = slot.manifest.golden
    probe = (
        {n: tensor_array(t) for n, t in golden.pairs[0].inputs.items()}
        if golden
        else smoke_inputs(slot.manifest.signature)
    )
    try:
        for _ in range(settings.warmup_runs):
            runtime.run(probe)
    except Exception:
        runtime.close()
        raise
    return model


def load_validated(
    path: Path,
    manifest: Manifest,
    settings: AgentSettings,
    *,
    golden: GoldenSet | None = None,
    baseline: Baseline | None = None,
    stop: threading.Event | None = None,
) -> tuple[ModelRuntime, ValidationReport]:
    """Load a verified artifact and validate it (golden pairs, NaN/Inf, latency judged on this
    device, against ``baseline`` when the policy asks for a ratio).

    Raises:
        ModelLoadError, UnsupportedArtifactError: the runtime cannot load it.
        ValidationFailedError: it failed validation (``TooSlowError``: only its latency).
        StoppingError: ``stop`` was set while it was validated (it is closed again).
    """
    runtime = load_runtime(path, manifest, threads=settings.inference_threads)
    try:
        report = validate(
            runtime,
            manifest,
            golden=golden,
            baseline=baseline,
            warmup_runs=settings.warmup_runs,
            timed_runs=settings.validation_timed_runs,
            stop=stop,
        )
    except Exception:
        runtime.close()
        raise
    return runtime, report


class SlotKeeper:
    """Keeps the active model in step with the active slot."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        store: SlotStore,
        active: ActiveModel,
        metrics: MetricsRegistry,
        reporter: Reporter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.active = active
        self.metrics = metrics
        self.reporter = reporter
        self.watch: HealthWatch | None = None

    def is_running(self, manifest: Manifest) -> bool:
        """Whether ``manifest`` names what already serves: a renewal (re-signed, new serial).

        The same bytes under another model id or version are installed instead, so that
        telemetry carries the new name.
        """
        slot, model = self.store.active, self.active.current
        if slot is None or model is None or model.info.sha256 != manifest.artifact.sha256:
            return False
        running = slot.manifest
        return (running.artifact.sha256, running.target, running.model_id, running.version) == (
            manifest.artifact.sha256,
            manifest.target,
            manifest.model_id,
            manifest.version,
        )

    def boot(self) -> tuple[DeviceStatus, str | None]:
        """Load the active slot, or the previous one if it fails; return status and detail.

        Falling back is reported as ``rolled_back`` from the slot that failed.
        """
        failures: list[str] = []
        while self.store.active is not None:
            slot = self.store.active
            try:
                model = load_slot(slot, self.settings)
            except (IntegrityError, OSError) as e:
                failures.append(f"{slot.info.version}: {e}")
                reason = (
                    f"active slot {slot.info.model_id} {slot.info.version} failed to load "
                    f"({e}); falling back to the previous slot"
                )
                self.reporter.event(EventType.SLOT_FALLBACK, manifest=slot.manifest, reason=reason)
                previous = self.store.previous
                self.store.drop_active(rolled_back(slot, previous, reason) if previous else None)
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
            return DeviceStatus.SERVING, "; ".join(failures) or None
        reason = "no model installed" + (
            f"; slots failed: {'; '.join(failures)}" if failures else ""
        )
        self.reporter.event(EventType.BOOTED, reason=reason)
        return DeviceStatus.IDLE, reason if failures else None

    def install(
        self,
        verified: VerifiedManifest,
        signed: SignedManifest,
        path: Path,
        digest: str,
        golden: GoldenSet | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Load, validate, persist (outcome ``swapped``) and swap in a verified artifact.

        ``golden`` is the verified golden file of a schema-2 manifest.

        Raises:
            ModelLoadError, UnsupportedArtifactError: the runtime cannot load it.
            ValidationFailedError: it failed validation (the old model keeps serving).
            StoppingError: ``stop`` was set while it was validated (nothing changed).
            OSError: the slot could not be saved (the old model keeps serving).
        """
        manifest = verified.manifest
        with self._baseline() as baseline:
            runtime, report = load_validated(
                path, manifest, self.settings, golden=golden, baseline=baseline, stop=stop
            )
        try:
            swapped = outcome_of(manifest, OutcomeResult.SWAPPED)
            slot = self.store.install(verified, signed, path, digest, swapped)
        except Exception:
            runtime.close()
            raise
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

    @contextlib.contextmanager
    def _baseline(self) -> Iterator[Baseline | None]:
        """The active model, held (so a swap cannot close it) while a candidate is timed."""
        try:
            model = self.active.acquire()
        except NoModelError:
            yield None
            return
        try:
            yield Baseline(model.runtime, model.signature)
        finally:
            self.active.release(model)

    def check_health(self) -> str | None:
        """Judge the post-swap watch; roll back on a bad verdict. Returns why, if it did."""
        watch = self.watch
        if watch is None:
            return None
        verdict = watch.check(self.metrics.since_load(watch.new), time.monotonic())
        if verdict is True:
            log.info("post-swap watch of %s passed", watch.new)
            self.watch = None
        elif isinstance(verdict, RollbackVerdict):
            self.watch = None
            if self.roll_back(verdict.reason, verdict.figures):
                return verdict.reason
        return None

    def roll_back(self, reason: str, figures: dict[str, float] | None = None) -> bool:
        """Swap the previous slot back in; report ``rolled_back`` about the slot it left.

        Returns whether it did (not without a previous slot that loads and can be saved).
        """
        previous, current = self.store.previous, self.store.active
        if previous is None or current is None:
            self.reporter.event(
                EventType.ERROR, reason=f"cannot roll back ({reason}): no previous slot"
            )
            return False
        try:
            model = load_slot(previous, self.settings)
        except (IntegrityError, OSError) as e:
            self.reporter.event(
                EventType.ERROR,
                manifest=previous.manifest,
                reason=f"cannot roll back ({reason}): previous slot failed: {e}",
            )
            return False
        text = (
            f"rolled back from {current.info.version} (serial {current.info.serial}) to "
            f"{previous.info.version} (serial {previous.info.serial}): {reason}"
        )
        try:
            self.store.roll_back(rolled_back(current, previous, reason_with_figures(text, figures)))
        except OSError as e:  # disk full: keep serving what the slots on disk say
            model.runtime.close()
            self.reporter.event(
                EventType.ERROR,
                manifest=current.manifest,
                reason=f"cannot roll back ({reason}): the slots could not be saved: {e}",
            )
            return False
        self.metrics.reset_version(model.key)
        self.active.swap(model)
        self.watch = None
        self.reporter.event(
            EventType.ROLLED_BACK,
            manifest=current.manifest,  # the serial it left, as the outcome says
            reason=text,
            figures={
                **(figures or {}),
                "from_serial": float(current.info.serial),
                "to_serial": float(previous.info.serial),
            },
        )
        return True
