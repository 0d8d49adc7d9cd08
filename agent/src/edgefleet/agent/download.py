"""Getting one artifact onto the disk: pick a source, resume, retry with backoff, report.

Transports live in :mod:`edgefleet.agent.fetch`; this module decides which to use and when to
give up, and finds a download an earlier run finished. Runs on the updater thread.
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
from edgefleet.shared.errors import DownloadError
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import Manifest
from edgefleet.shared.messages import EventType

log = logging.getLogger(__name__)


def holds_artifact(path: Path, manifest: Manifest) -> bool:
    """Whether ``path`` holds exactly the manifest's artifact; a wrong file there is removed.

    Raises:
        OSError: the file could not be read or removed.
    """
    if not path.exists():
        return False
    artifact = manifest.artifact
    if path.stat().st_size == artifact.size and sha256_file(path) == artifact.sha256:
        return True
    log.warning("%s does not hold the signed bytes; removing it", path)
    path.unlink(missing_ok=True)
    return False


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
        path = self.path_for(manifest)
        for suffix in ("", ".partial", ".bitmap"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

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
        settings, artifact = self.settings, manifest.artifact
        try:
            reassembler = Reassembler(
                self.path_for(manifest),
                sha256=artifact.sha256,
                size=artifact.size,
                chunk_size=artifact.chunk_size,
                chunk_sha256=artifact.chunk_sha256,
                durable=settings.durable_writes,
            )
        except OSError as e:
            raise StorageError(f"preparing the download of {artifact.sha256[:12]}", e) from e
        self._current = reassembler
        try:
            self._check_space(reassembler)
            return self._fill(manifest, reassembler, idle)
        finally:
            self._current = None

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

    def _fill(self, manifest: Manifest, reassembler: Reassembler, idle: Callable[[], None]) -> Path:
        settings, artifact = self.settings, manifest.artifact
        figures = {
            "chunks": float(artifact.chunk_count),
            "resumed_chunks": float(reassembler.resumed_chunks),
        }
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
        self.reporter.event(EventType.DOWNLOAD_DONE, manifest=manifest, figures=figures)
        return path
