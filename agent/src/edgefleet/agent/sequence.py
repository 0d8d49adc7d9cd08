"""The ``seq`` of every published state: increasing within a run and across restarts.

``seq = (epoch << 32) | counter``. The epoch is persisted in the data dir and moves forward
once per agent start, so no state of this run can be mistaken for one of an earlier run. The
epoch is never below the hours since 2020, so a device whose data dir was wiped or whose epoch
file is lost still moves forward (unless it restarted more often than hourly all its life).
Both parts stay small enough for ``seq`` to remain exact in a JSON number (below 2**53) for
centuries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.slots import write_atomic

log = logging.getLogger(__name__)

COUNTER_BITS = 32
_EPOCH_ORIGIN_S = 1_577_836_800  # 2020-01-01T00:00:00Z


def clock_epoch(now_s: float) -> int:
    """The lowest epoch a start at wall-clock ``now_s`` uses: whole hours since 2020."""
    return max(0, int((now_s - _EPOCH_ORIGIN_S) // 3600))


class StateSequence:
    """Hands out ``seq`` numbers; thread-safe. Creating one starts a new epoch on disk."""

    def __init__(
        self, path: Path, *, durable: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.durable = durable
        self._lock = threading.Lock()
        self._counter = 0
        self.epoch = max(self._stored() + 1, clock_epoch(clock()))
        self._persist()

    def _stored(self) -> int:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.error("state epoch file %s is unreadable (%s); using the clock", self.path, e)
            return 0

    def _persist(self) -> None:
        try:
            write_atomic(self.path, f"{self.epoch}\n".encode(), durable=self.durable)
        except OSError as e:  # a full disk must not keep the agent from serving
            log.error("cannot persist state epoch %d to %s: %s", self.epoch, self.path, e)

    def next(self) -> int:
        """The next ``seq``, above every one handed out before (in this run and earlier ones)."""
        with self._lock:
            self._counter += 1
            if self._counter >= 1 << COUNTER_BITS:  # ~4e9 states in one run: a new epoch
                self.epoch += 1
                self._counter = 1
                self._persist()
            return (self.epoch << COUNTER_BITS) | self._counter
