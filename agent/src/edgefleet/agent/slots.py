"""Model slots on disk: the active and the previous verified artifact, and the last serial.

Artifacts live content-addressed under ``artifacts/<sha256>``; which one is active, which is
previous and the last accepted serial live in one ``slots.json`` replaced atomically (temp file,
fsync, rename, fsync of the directory), so a crash at any instant leaves either the old or the
new state, each naming artifacts that were verified.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edgefleet.shared.errors import HashMismatchError, LengthMismatchError
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import Manifest, SignedManifest
from edgefleet.shared.messages import SlotInfo
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
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


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
        self.active: Slot | None = None
        self.previous: Slot | None = None
        self.last_serial = 0
        self.last_manifest_sha256: str | None = None
        self._load()

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
        self.last_serial = int(state.get("last_serial", 0))
        self.last_manifest_sha256 = state.get("last_manifest_sha256")
        self.active = self._slot(state.get("active"))
        self.previous = self._slot(state.get("previous"))

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
    def _save(self) -> None:
        state = {
            "last_serial": self.last_serial,
            "last_manifest_sha256": self.last_manifest_sha256,
            "active": self.active.signed.model_dump(mode="json") if self.active else None,
            "previous": self.previous.signed.model_dump(mode="json") if self.previous else None,
        }
        write_atomic(self.state_path, json.dumps(state).encode(), durable=self.durable)
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        keep = {s.manifest.artifact.sha256 for s in (self.active, self.previous) if s is not None}
        for path in self.artifacts_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def record_outcome(self, serial: int, manifest_sha256: str) -> None:
        """Remember that a verified manifest reached a final outcome, so it is never replayed."""
        self.last_serial = max(self.last_serial, serial)
        self.last_manifest_sha256 = manifest_sha256
        self._save()

    def install(
        self,
        verified: VerifiedManifest,
        signed: SignedManifest,
        downloaded: Path,
        manifest_sha256: str | None = None,
    ) -> Slot:
        """Move a verified download into place and make it the active slot.

        The active slot becomes the previous one; the old previous artifact is deleted. The
        serial (and the manifest's digest) are recorded in the same atomic write, so a crash
        right after cannot make a redelivery of this manifest look like a replay.
        """
        manifest = verified.manifest
        target = self.artifacts_dir / manifest.artifact.sha256
        if downloaded != target:
            os.replace(downloaded, target)
            if self.durable:
                fsync_dir(self.artifacts_dir)
        slot = Slot(signed, manifest, target)
        if self.active is None or self.active.manifest.artifact.sha256 != manifest.artifact.sha256:
            self.previous = self.active
        self.active = slot
        self.last_serial = max(self.last_serial, manifest.serial)
        if manifest_sha256 is not None:
            self.last_manifest_sha256 = manifest_sha256
        self._save()
        return slot

    def roll_back(self) -> Slot:
        """Make the previous slot active and forget the one that was active.

        Raises:
            LookupError: there is no previous slot.
        """
        if self.previous is None:
            raise LookupError("no previous slot to roll back to")
        self.active, self.previous = self.previous, None
        self._save()
        return self.active

    def drop_active(self) -> None:
        """Forget an active slot that fails to load; the previous one (if any) takes its place."""
        self.active, self.previous = self.previous, None
        self._save()
