"""Getting one artifact onto the disk: pick a source, resume, retry with backoff, report.

Transports live in :mod:`edgefleet.agent.fetch`; this module decides which to use and when to
give up, and finds a download an earlier run finished. A file whose chunk hashes travel in a
chunk index (manifest schema 2) has its index fetched first through the same sources, verified
by the index's own inline hashes and sha256, read and dropped; a resumed download fetches the
small index again. Runs on the updater thread.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.errors import StoppingError, StorageError
from edgefleet.agent.fetch import HttpRangeFetcher, MqttChunkFetcher
from edgefleet.agent.report import Reporter
from edgefleet.agent.settings import AgentSettings
from edgefleet.shared.chunks import Reassembler
from edgefleet.shared.errors import DownloadError, HashMismatchError, LengthMismatchError
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import ArtifactRef, Manifest, decode_chunk_index
from edgefleet.shared.messages import EventType

log = logging.getLogger(__name__)


def holds_artifact(path: Path, manifest: Manifest) -> bool:
    """Whether ``path`` holds exactly the manifest's artifact; a wrong file there is removed.

    Raises:
        OSError: the file could not be read or removed.
    """
    return holds_file(path, manifest.artifact)


def holds_file(path: Path, ref: ArtifactRef) -> bool:
    """Whether ``path`` holds exactly the bytes of ``ref``; a wrong file there is removed.

    Raises:
        OSError: the file could not be read or removed.
    """
    if not path.exists():
        return False
    if path.stat().st_size == ref.size and sha256_file(path) == ref.sha256:
        return True
    log.warning("%s does not hold the signed bytes; removing it", path)
    path.unlink(missing_ok=True)
    return False


def _forget(path: Path) -> None:
    for suffix in ("", ".partial", ".bitmap"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


class ArtifactDownloader:
    """Downloads into ``downloads_dir/<sha256>`` through the sources a manifest offers."""

    def __init__(
        self,
        settings: AgentSettings,
        downloads_dir: Path,
        *,
        mqtt: MqttChunkFetcher,
        reporter: Reporter,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.downloads_dir = downloads_dir
        self.mqtt = mqtt
        self.http = HttpRangeFetcher(settings)
        self.reporter = reporter
        self.stop = stop
        self._current: Reassembler | None = None

    def path_for(self, manifest: Manifest) -> Path:
        return self.downloads_dir / manifest.artifact.sha256

    def discard(self, manifest: Manifest) -> None:
        """Forget a download (complete or partial) of this manifest's artifact."""
        _forget(self.path_for(manifest))

    def done_bytes(self) -> int:
        """Bytes the download in progress holds (whole chunks, capped at the size), else 0."""
        current = self._current
        if current is None:
            return 0
        return min(current.bitmap.present * current.chunk_size, current.size)

    def finished(self, manifest: Manifest) -> Path | None:
        """A complete download of this artifact left by an earlier run, if it is intact.

        The reassembler renames ``<sha>.partial`` to ``<sha>`` only once the whole file
        hashed right, then drops the bitmap; a crash after the rename (before the bitmap is
        gone, or before the artifact was installed) leaves a finished file to reuse.

        Raises:
            OSError: the file could not be read or removed.
        """
        path = self.path_for(manifest)
        if not holds_artifact(path, manifest):
            return None
        path.with_name(path.name + ".bitmap").unlink(missing_ok=True)
        log.info("reusing the finished download %s", path.name)
        return path

    def download(self, manifest: Manifest, idle: Callable[[], None] = lambda: None) -> Path:
        """Download the artifact, resuming from the on-disk bitmap, checking every byte.

        ``idle`` is called once the download is open and every fraction of a second while it
        runs or waits, so the updater can act on commands, health checks and progress meanwhile.

        Raises:
            DownloadError: no source delivered it before ``fetch_timeout_s``.
            StoppingError: the agent is stopping (the download resumes at the next start).
            StorageError: the download could not be written (disk full, permissions), or the
                disk lacks the space for it.
            HashMismatchError, LengthMismatchError: the bytes are not the signed ones.
        """
        artifact = manifest.artifact
        reassembler = self._open(
            self.path_for(manifest), artifact, self._chunk_digests(manifest, idle)
        )
        self._current = reassembler
        try:
            self._check_space(reassembler)
            return self._fill(manifest, artifact, reassembler, idle)
        finally:
            self._current = None

    def _open(self, path: Path, ref: ArtifactRef, chunk_sha256: tuple[str, ...]) -> Reassembler:
        """Raises: StorageError: the download could not be prepared."""
        try:
            return Reassembler(
                path,
                sha256=ref.sha256,
                size=ref.size,
                chunk_size=ref.chunk_size,
                chunk_sha256=chunk_sha256,
                durable=self.settings.durable_writes,
            )
        except OSError as e:
            raise StorageError(f"preparing the download of {ref.sha256[:12]}", e) from e

    def _chunk_digests(self, manifest: Manifest, idle: Callable[[], None]) -> tuple[str, ...]:
        """The chunk hashes of the manifest's artifact: inline, or read from its chunk index,
        fetched like any file (no events: it is part of this download) and dropped once read.

        Raises:
            HashMismatchError, LengthMismatchError: the index is not the signed one, or does
                not hold one digest per chunk (``what`` names the chunk index).
            DownloadError, StoppingError, StorageError: as :meth:`download`.
        """
        artifact = manifest.artifact
        index = artifact.chunk_index
        if index is None or index.chunk_sha256 is None:  # inline (the ref validated one form)
            assert artifact.chunk_sha256 is not None
            return artifact.chunk_sha256
        path = self.downloads_dir / index.sha256
        what = f"chunk index {index.sha256[:12]} of {artifact.sha256[:12]}"
        try:
            if not holds_file(path, index):
                reassembler = self._open(path, index, index.chunk_sha256)
                self._check_space(reassembler)
                self._fill(manifest, index, reassembler, idle, report=False)
            raw = path.read_bytes()
            return decode_chunk_index(raw, artifact)
        except HashMismatchError as e:
            raise HashMismatchError(f"{what}, {e.what}", e.expected, e.actual) from e
        except LengthMismatchError as e:
            raise LengthMismatchError(f"{what}, {e.what}", e.expected, e.actual) from e
        except OSError as e:
            raise StorageError(f"reading the {what}", e) from e
        finally:
            try:
                _forget(path)
            except OSError as e:
                log.warning("could not remove the %s: %s", what, e)

    def _check_space(self, reassembler: Reassembler) -> None:
        """Refuse to start what would fill the disk: the slot state (and a rollback) must
        still be writable, and the rest of the device keeps running.

        Raises:
            StorageError: free space is below the missing bytes plus ``disk_reserve_bytes``.
        """
        missing = min(len(reassembler.missing()) * reassembler.chunk_size, reassembler.size)
        needed = missing + self.settings.disk_reserve_bytes
        try:
            free = shutil.disk_usage(self.downloads_dir).free
        except OSError as e:
            raise StorageError(f"checking free space in {self.downloads_dir}", e) from e
        if free < needed:
            error = OSError(
                errno.ENOSPC,
                f"{os.strerror(errno.ENOSPC)} ({needed} bytes needed with the reserve of "
                f"{self.settings.disk_reserve_bytes}, {free} free)",
                str(self.downloads_dir),
            )
            raise StorageError(f"downloading {reassembler.sha256[:12]}", error)

    def _fill(
        self,
        manifest: Manifest,
        artifact: ArtifactRef,
        reassembler: Reassembler,
        idle: Callable[[], None],
        *,
        report: bool = True,
    ) -> Path:
        """Fill ``reassembler`` with ``artifact`` (the manifest's, or its chunk index) from its
        sources in turn, with backoff, until done or ``fetch_timeout_s``.

        Raises: as :meth:`download`.
        """
        settings = self.settings
        figures = {
            "chunks": float(artifact.chunk_count),
            "resumed_chunks": float(reassembler.resumed_chunks),
        }
        if report:
            self.reporter.event(EventType.DOWNLOAD_STARTED, manifest=manifest, figures=figures)
        idle()
        order = ["mqtt", "http"] if settings.fetch_prefer == "mqtt" else ["http", "mqtt"]
        sources = [s for s in order if (artifact.mqtt_topic if s == "mqtt" else artifact.http_url)]
        started = time.monotonic()
        deadline = started + settings.fetch_timeout_s
        backoff = Backoff(settings.fetch_retry_min_s, settings.fetch_retry_max_s)
        errors: dict[str, DownloadError] = {}  # the last failure of each source tried
        while not reassembler.is_complete():
            for source in sources:
                if time.monotonic() > deadline:
                    break  # out of time: a source not tried says nothing about why
                fetcher = self.mqtt if source == "mqtt" else self.http
                try:
                    fetcher.fetch(artifact, reassembler, deadline, self.stop, idle)
                    break
                except DownloadError as e:
                    errors[source] = e
                    log.warning("%s download failed: %s", source, e)
            if reassembler.is_complete():
                break
            if self.stop.is_set():
                raise StoppingError(f"download of serial {manifest.serial} stopped")
            if time.monotonic() > deadline:
                why = "; ".join(f"{source}: {e}" for source, e in errors.items()) or "no source"
                raise DownloadError(f"gave up after {settings.fetch_timeout_s}s: {why}")
            retry_at = time.monotonic() + backoff.next_delay()
            while time.monotonic() < retry_at and not self.stop.is_set():
                idle()
                self.stop.wait(
                    min(self.settings.idle_every_s, max(0.0, retry_at - time.monotonic()))
                )
        try:
            path = reassembler.finalize()
        except OSError as e:
            raise StorageError(f"finishing the download of {artifact.sha256[:12]}", e) from e
        figures["seconds"] = time.monotonic() - started
        if report:
            self.reporter.event(EventType.DOWNLOAD_DONE, manifest=manifest, figures=figures)
        return path
