"""Getting one artifact onto the disk: pick a source, resume, retry with backoff, report.

Transports live in :mod:`edgefleet.agent.fetch`; this module decides which to use and when to
give up. Runs on the updater thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.fetch import IDLE_EVERY_S, HttpRangeFetcher, MqttChunkFetcher
from edgefleet.agent.report import Reporter
from edgefleet.agent.settings import AgentSettings
from edgefleet.shared.chunks import Reassembler
from edgefleet.shared.errors import DownloadError
from edgefleet.shared.manifest import Manifest
from edgefleet.shared.messages import EventType

log = logging.getLogger(__name__)


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

    def path_for(self, manifest: Manifest) -> Path:
        return self.downloads_dir / manifest.artifact.sha256

    def discard(self, manifest: Manifest) -> None:
        """Forget a download (complete or partial) of this manifest's artifact."""
        path = self.path_for(manifest)
        for suffix in ("", ".partial", ".bitmap"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

    def download(self, manifest: Manifest, idle: Callable[[], None] = lambda: None) -> Path:
        """Download the artifact, resuming from the on-disk bitmap, checking every byte.

        ``idle`` is called every fraction of a second while the download waits, so the updater
        can act on commands and health checks meanwhile.

        Raises:
            DownloadError: no source delivered it before ``fetch_timeout_s``.
            HashMismatchError, LengthMismatchError: the bytes are not the signed ones.
        """
        settings, artifact = self.settings, manifest.artifact
        reassembler = Reassembler(
            self.path_for(manifest),
            sha256=artifact.sha256,
            size=artifact.size,
            chunk_size=artifact.chunk_size,
            chunk_sha256=artifact.chunk_sha256,
            durable=settings.durable_writes,
        )
        figures = {
            "chunks": float(artifact.chunk_count),
            "resumed_chunks": float(reassembler.resumed_chunks),
        }
        self.reporter.event(EventType.DOWNLOAD_STARTED, manifest=manifest, figures=figures)
        order = ["mqtt", "http"] if settings.fetch_prefer == "mqtt" else ["http", "mqtt"]
        sources = [s for s in order if (artifact.mqtt_topic if s == "mqtt" else artifact.http_url)]
        started = time.monotonic()
        deadline = started + settings.fetch_timeout_s
        backoff = Backoff(settings.fetch_retry_min_s, settings.fetch_retry_max_s)
        last_error: DownloadError | None = None
        while not reassembler.is_complete():
            for source in sources:
                fetcher = self.mqtt if source == "mqtt" else self.http
                try:
                    fetcher.fetch(artifact, reassembler, deadline, self.stop, idle)
                    break
                except DownloadError as e:
                    last_error = e
                    log.warning("%s download failed: %s", source, e)
            if reassembler.is_complete():
                break
            if time.monotonic() > deadline or self.stop.is_set():
                raise DownloadError(f"gave up after {settings.fetch_timeout_s}s: {last_error}")
            retry_at = time.monotonic() + backoff.next_delay()
            while time.monotonic() < retry_at and not self.stop.is_set():
                idle()
                self.stop.wait(min(IDLE_EVERY_S, max(0.0, retry_at - time.monotonic())))
        path = reassembler.finalize()
        figures["seconds"] = time.monotonic() - started
        self.reporter.event(EventType.DOWNLOAD_DONE, manifest=manifest, figures=figures)
        return path
