"""Where the agent is with the manifest it works on, for the retained state, and when to say so.

Pure bookkeeping on the updater thread: phase changes are published at once, download
progress at most every ``progress_interval_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgefleet.shared.manifest import Manifest
from edgefleet.shared.messages import Progress, ProgressPhase

MAX_ERROR = 512


class ProgressTracker:
    """The :class:`Progress` of the manifest in hand, or ``None`` when the agent is settled."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.current: Progress | None = None
        self._resume_phase = ProgressPhase.DOWNLOADING
        self._shown_at = 0.0

    def begin(
        self, manifest: Manifest, phase: ProgressPhase = ProgressPhase.DOWNLOADING
    ) -> Progress:
        """Start on ``manifest``: nothing held yet."""
        self.current = Progress(
            serial=manifest.serial,
            sha256=manifest.artifact.sha256,
            phase=phase,
            total_bytes=manifest.artifact.size,
        )
        self._resume_phase = phase
        self._shown_at = self.clock()
        return self.current

    def enter(self, phase: ProgressPhase, *, done_bytes: int | None = None) -> Progress | None:
        """Move to ``phase`` (keeping attempts and the last error); publish it at once."""
        if self.current is None:
            return None
        update: dict[str, object] = {"phase": phase}
        if done_bytes is not None:
            update["done_bytes"] = done_bytes
        self.current = self.current.model_copy(update=update)
        self._shown_at = self.clock()
        return self.current

    def downloaded(self, done_bytes: int) -> bool:
        """Note the bytes held; True when that is news worth publishing now."""
        current = self.current
        if current is None or current.phase is not ProgressPhase.DOWNLOADING:
            return False
        if done_bytes == current.done_bytes:
            return False
        self.current = current.model_copy(update={"done_bytes": done_bytes})
        now = self.clock()
        if now - self._shown_at < self.interval_s:
            return False
        self._shown_at = now
        return True

    def retrying(self, error: str, done_bytes: int | None = None) -> Progress | None:
        """A local I/O failure: count the attempt, keep the error; publish it at once."""
        if self.current is None:
            return None
        if self.current.phase is not ProgressPhase.RETRYING:
            self._resume_phase = self.current.phase
        attempts = self.current.attempts + 1
        self.current = self.current.model_copy(
            update={"attempts": attempts, "last_error": error[:MAX_ERROR]}
        )
        return self.enter(ProgressPhase.RETRYING, done_bytes=done_bytes)

    def resume(self) -> Progress | None:
        """Back to the phase the last local I/O failure interrupted (retries are kept)."""
        if self.current is None or self.current.phase is not ProgressPhase.RETRYING:
            return self.current
        return self.enter(self._resume_phase)

    def clear(self) -> None:
        self.current = None
