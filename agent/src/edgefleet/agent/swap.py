"""Hot swap: the active model as one reference, with per-model request counts.

Requests acquire the current :class:`LoadedModel` and release it when done; a swap replaces the
reference under a lock held for a few instructions, so requests in flight finish on the model
they started with. The thread that swaps (the updater, or ``Agent.stop``) then waits for those
requests and closes the old runtime itself: tearing a runtime down is never a serving thread's
cost, unless a request outlasts that wait (``drain_s``), when its release closes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from edgefleet.agent.errors import NoModelError
from edgefleet.agent.inputs import InputChecker
from edgefleet.agent.runtimes import ModelRuntime
from edgefleet.shared.manifest import IOSignature
from edgefleet.shared.messages import SlotInfo

log = logging.getLogger(__name__)

DRAIN_S = 5.0  # how long a swap waits for the requests in flight on the model it retires


@dataclass(eq=False)
class LoadedModel:
    """A runtime with the signed facts about it, and how many requests are using it."""

    info: SlotInfo
    signature: IOSignature
    runtime: ModelRuntime
    refs: int = 0
    retired: bool = False
    closed: bool = False
    close_on_release: bool = False  # the swap stopped waiting: its last request closes it
    drained: threading.Event = field(init=False, default_factory=threading.Event)
    key: tuple[str, str] = field(init=False)
    check_inputs: InputChecker = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.info.model_id, self.info.version)
        self.check_inputs = InputChecker(self.signature)


class ActiveModel:
    """The one model that serves requests, replaceable while requests are running."""

    def __init__(self, *, drain_s: float = DRAIN_S) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        self._drain_s = drain_s

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    # acquire and release run twice per request: the lock is taken with acquire()/release()
    # in try/finally, which costs about half of a ``with`` block's special-method calls.
    def acquire(self) -> LoadedModel:
        """Take a reference on the active model.

        Raises:
            NoModelError: nothing is active.
        """
        lock = self._lock
        lock.acquire()
        try:
            model = self._current
            if model is None:
                raise NoModelError("no model is active")
            model.refs += 1
        finally:
            lock.release()
        return model

    def release(self, model: LoadedModel) -> None:
        """Drop a reference. The last one on a retired model wakes the swap waiting for it
        (or, past that wait, closes the runtime)."""
        lock = self._lock
        lock.acquire()
        try:
            model.refs -= 1
            if model.refs or not model.retired:
                return
            close = model.close_on_release and not model.closed
            if close:
                model.closed = True
        finally:
            lock.release()
        if close:
            self._close(model)
        else:
            model.drained.set()

    @contextmanager
    def using(self) -> Iterator[LoadedModel]:
        """``with active.using() as model:`` acquires and always releases."""
        model = self.acquire()
        try:
            yield model
        finally:
            self.release(model)

    def swap(self, new: LoadedModel | None) -> LoadedModel | None:
        """Make ``new`` the active model in one reference change; retire and close the old one.

        Requests in flight on the old model finish on it: this waits for them (up to
        ``drain_s``) and closes the old runtime on the calling thread; a request still running
        after that closes it on release. Returns the model that was active.
        """
        with self._lock:
            old, self._current = self._current, new
            if old is None:
                return None
            old.retired = True
            busy = old.refs > 0
        if busy:
            old.drained.wait(self._drain_s)
        with self._lock:
            close = old.refs == 0 and not old.closed
            if close:
                old.closed = True
            else:
                old.close_on_release = True
        if close:
            self._close(old)
        return old

    @staticmethod
    def _close(model: LoadedModel) -> None:
        log.info("releasing %s %s", model.info.model_id, model.info.version)
        model.runtime.close()
