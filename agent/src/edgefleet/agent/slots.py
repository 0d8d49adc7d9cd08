"""Model slots on disk: the active and the previous verified artifact, the last serial and the
last outcome.

Artifacts live content-addressed under ``artifacts/<sha256>``; which one is active, which is
previous, the last accepted serial and the outcome of the last manifest handled live in one
``slots.json`` replaced atomically (temp file, fsync, rename, fsync of the directory), so a
crash at any instant leaves either the old or the new state, each naming artifacts that were
verified. A write that fails (disk full) changes nothing in memory either, except where a
method says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from edgefleet.shared.errors import HashMismatchError, LengthMismatchError
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import Manifest, SignedManifest
from edgefleet.shared.messages import Outcome, SlotInfo
from edgefleet.shared.signing import VerifiedManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Slot:
    """One installed artifact and the signed manifest it was verified against."""

    signed: SignedManifest
    manifest: Manifest
    path: Path

    @property
    def info(self) -> SlotInfo:
        return slot_info(self.manifest)


def slot_info(manifest: Manifest) -> SlotInfo:
    return SlotInfo(
        model_id=manifest.model_id,
        version=manifest.version,
        serial=manifest.serial,
        sha256=manifest.artifact.sha256,
        target=manifest.target,
    )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename.

    Raises:
        OSError: the write failed (``path`` is unchanged and the temp file is removed).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written temp file must not hold a full disk
        raise
    if durable:
        fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """Everything ``slots.json`` holds; replaced as a whole."""

    active: Slot | None = None
    previous: Slot | None = None
    last_serial: int = 0
    last_manifest_sha256: str | None = None
    last_outcome: Outcome | None = None


class SlotStore:
    """The agent's persistent install state under ``data_dir``."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.artifacts_dir = data_dir / "artifacts"
        self.downloads_dir = data_dir / "downloads"
        self.state_path = data_dir / "slots.json"
        self.durable = durable
        for directory in (self.artifacts_dir, self.downloads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.record = SlotRecord()
        self.in_progress: str | None = None  # sha256 of an artifact being installed: kept
        self._load()

    @property
    def active(self) -> Slot | None:
        return self.record.active

    @property
    def previous(self) -> Slot | None:
        return self.record.previous

    @property
    def last_serial(self) -> int:
        return self.record.last_serial

    @property
    def last_manifest_sha256(self) -> str | None:
        return self.record.last_manifest_sha256

    @property
    def last_outcome(self) -> Outcome | None:
        return self.record.last_outcome

    # -- reading --------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.error(
                "slot state %s is unreadable (%s); starting with no slots", self.state_path, e
            )
            return
        self.record = SlotRecord(
            active=self._slot(state.get("active")),
            previous=self._slot(state.get("previous")),
            last_serial=int(state.get("last_serial", 0)),
            last_manifest_sha256=state.get("last_manifest_sha256"),
            last_outcome=self._outcome(state.get("last_outcome")),
        )

    def _slot(self, raw: object) -> Slot | None:
        if raw is None:
            return None
        try:
            signed = SignedManifest.model_validate(raw)
            manifest = Manifest.model_validate(signed.manifest)
        except ValidationError as e:
            log.error("a stored slot is malformed (%s); ignoring it", e)
            return None
        return Slot(signed, manifest, self.artifacts_dir / manifest.artifact.sha256)

    @staticmethod
    def _outcome(raw: object) -> Outcome | None:
        if raw is None:
            return None
        try:
            return Outcome.model_validate(raw)
        except ValidationError as e:
            log.error("the stored last outcome is malformed (%s); ignoring it", e)
            return None

    @staticmethod
    def check_artifact(slot: Slot) -> None:
        """Re-check an installed artifact's size and sha256 before loading it.

        Raises:
            LengthMismatchError: the file is missing or has the wrong size.
            HashMismatchError: the file's bytes changed since they were verified.
        """
        expected = slot.manifest.artifact
        size = slot.path.stat().st_size if slot.path.exists() else -1
        if size != expected.size:
            raise LengthMismatchError(f"installed artifact {slot.path.name}", expected.size, size)
        actual = sha256_file(slot.path)
        if actual != expected.sha256:
            raise HashMismatchError(f"installed artifact {slot.path.name}", expected.sha256, actual)

    # -- writing --------------------------------------------------------------------------
    def _write(self, record: SlotRecord) -> None:
        """Persist ``record`` atomically.

        Raises:
            OSError: it could not be written; nothing on disk changed.
        """
        state = {
            "last_serial": record.last_serial,
            "last_manifest_sha256": record.last_manifest_sha256,
            "last_outcome": record.last_outcome.model_dump(mode="json")
            if record.last_outcome
            else None,
            "active": record.active.signed.model_dump(mode="json") if record.active else None,
            "previous": record.previous.signed.model_dump(mode="json") if record.previous else None,
        }
        write_atomic(self.state_path, json.dumps(state).encode(), durable=self.durable)

    def _commit(self, record: SlotRecord) -> None:
        """Persist ``record``, then make it the state in memory and drop unused artifacts.

        Raises:
            OSError: it could not be written; neither memory nor disk changed.
        """
        self._write(record)
        self.record = record
        self._collect_garbage()

    def _commit_or_keep_in_memory(self, record: SlotRecord, what: str) -> bool:
        self.record = record
        try:
            self._write(record)
        except OSError as e:
            log.error("cannot persist %s to %s: %s", what, self.state_path, e)
            return False
        self._collect_garbage()
        return True

    def _collect_garbage(self) -> None:
        keep = {s.manifest.artifact.sha256 for s in (self.active, self.previous) if s is not None}
        if self.in_progress is not None:
            keep.add(self.in_progress)
        try:
            for path in self.artifacts_dir.iterdir():
                if path.name not in keep:
                    path.unlink(missing_ok=True)
        except OSError as e:  # the state is written; a leftover file is only wasted space
            log.warning("cannot remove unused artifacts in %s: %s", self.artifacts_dir, e)

    def record_outcome(
        self, serial: int, manifest_sha256: str, outcome: Outcome | None = None
    ) -> bool:
        """Remember that a verified manifest reached a final outcome, so it is never replayed.

        Takes effect in memory even when it cannot be written (disk full): this run still
        treats the manifest as handled and reports the outcome; a restart handles it again.
        Returns whether it was persisted.
        """
        record = replace(
            self.record,
            last_serial=max(self.last_serial, serial),
            last_manifest_sha256=manifest_sha256,
            last_outcome=outcome or self.last_outcome,
        )
        return self._commit_or_keep_in_memory(record, f"the outcome of serial {serial}")

    def install(
        self,
        verified: VerifiedManifest,
        signed: SignedManifest,
        downloaded: Path,
        manifest_sha256: str | None = None,
        outcome: Outcome | None = None,
    ) -> Slot:
        """Move a verified download into place and make it the active slot.

        The active slot becomes the previous one; the old previous artifact is deleted. The
        serial, the manifest's digest and the outcome are recorded in the same atomic write,
        so a crash right after cannot make a redelivery of this manifest look like a replay.
        A crash between the move and the write leaves the artifact in ``artifacts/``, where
        the next attempt finds it.

        Raises:
            OSError: the move or the write failed (disk full, permissions); the slots are
                unchanged.
        """
        manifest = verified.manifest
        target = self.artifacts_dir / manifest.artifact.sha256
        if downloaded != target:
            os.replace(downloaded, target)
            if self.durable:
                fsync_dir(self.artifacts_dir)
        slot = Slot(signed, manifest, target)
        previous = self.previous
        if self.active is None or self.active.manifest.artifact.sha256 != manifest.artifact.sha256:
            previous = self.active
        self._commit(
            SlotRecord(
                active=slot,
                previous=previous,
                last_serial=max(self.last_serial, manifest.serial),
                last_manifest_sha256=manifest_sha256 or self.last_manifest_sha256,
                last_outcome=outcome or self.last_outcome,
            )
        )
        return slot

    def renew(
        self,
        verified: VerifiedManifest,
        signed: SignedManifest,
        manifest_sha256: str,
        outcome: Outcome,
    ) -> Slot:
        """Replace the active slot's signed manifest with a newer one for the same artifact.

        The artifact is not touched; serial, digest, outcome and slot change in one write.

        Raises:
            ValueError: there is no active slot, or it holds another artifact or target.
            OSError: the write failed; the slots are unchanged.
        """
        manifest, active = verified.manifest, self.active
        if active is None or (active.manifest.artifact.sha256, active.manifest.target) != (
            manifest.artifact.sha256,
            manifest.target,
        ):
            raise ValueError(f"serial {manifest.serial} does not renew the active slot")
        slot = Slot(signed, manifest, active.path)
        self._commit(
            replace(
                self.record,
                active=slot,
                last_serial=max(self.last_serial, manifest.serial),
                last_manifest_sha256=manifest_sha256,
                last_outcome=outcome,
            )
        )
        return slot

    def roll_back(self, outcome: Outcome | None = None) -> Slot:
        """Make the previous slot active and forget the one that was active.

        Raises:
            LookupError: there is no previous slot.
            OSError: the write failed; the slots are unchanged.
        """
        target = self.previous
        if target is None:
            raise LookupError("no previous slot to roll back to")
        self._commit(
            replace(
                self.record, active=target, previous=None, last_outcome=outcome or self.last_outcome
            )
        )
        return target

    def drop_active(self, outcome: Outcome | None = None) -> None:
        """Forget an active slot that fails to load; the previous one (if any) takes its place.

        Takes effect in memory even when it cannot be written: the slot failed to load and
        will fail again at the next start.
        """
        record = replace(
            self.record,
            active=self.previous,
            previous=None,
            last_outcome=outcome or self.last_outcome,
        )
        self._commit_or_keep_in_memory(record, "the fallback to the previous slot")
