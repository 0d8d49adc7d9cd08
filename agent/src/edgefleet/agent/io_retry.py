"""Retrying work that failed on local I/O (disk full, permissions) until a time limit.

Local failures are not the manifest's fault: the work is tried again with capped, jittered
backoff, and only ``io_retry_limit_s`` after the first failure does the last error stand.
Runs on the updater thread; ``wait`` lets it act on commands meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.errors import StorageError
from edgefleet.agent.settings import AgentSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
LocalIoError = StorageError | OSError


class LocalIoRetry:
    """``run(attempt)`` until it stops failing on local I/O, or the time limit is spent."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        wait: Callable[[float], None],
        on_retry: Callable[[LocalIoError, int, float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.wait = wait
        self.on_retry = on_retry
        self.clock = clock

    def run(self, attempt: Callable[[], T]) -> T:
        """Return what ``attempt`` returns; between failed attempts call ``on_retry(error,
        attempt number, delay)`` and ``wait(delay)``.

        Raises:
            StorageError, OSError: the last local I/O error, once ``io_retry_limit_s`` passed
                since the first one.
            Whatever ``attempt`` or ``wait`` raise besides local I/O errors.
        """
        settings = self.settings
        backoff = Backoff(
            settings.io_retry_min_s, settings.io_retry_max_s, floor_s=settings.io_retry_min_s / 2
        )
        first_error: float | None = None
        while True:
            try:
                return attempt()
            except (StorageError, OSError) as e:
                now = self.clock()
                first_error = now if first_error is None else first_error
                remaining = settings.io_retry_limit_s - (now - first_error)
                if remaining <= 0:
                    raise
                delay = min(backoff.next_delay(), remaining)
                log.warning("local I/O error (attempt %d): %s", backoff.attempt, e)
                self.on_retry(e, backoff.attempt, delay)
                self.wait(delay)
