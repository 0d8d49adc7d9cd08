"""Hot swap: the active model as one reference, with per-model request counts.

Requests acquire the current :class:`LoadedModel` and release it when done; a swap replaces the
reference under a lock held for a few instructions, so requests in flight finish on the model
they started with, and the old runtime is closed when its last request releases it.
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


@dataclass(eq=False)
class LoadedModel:
    """A runtime with the signed facts about it, and how many requests are using it."""

    info: SlotInfo
    signature: IOSignature
    runtime: ModelRuntime
    refs: int = 0
    retired: bool = False
    closed: bool = False
    key: tuple[str, str] = field(init=False)
    check_inputs: InputChecker = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.info.model_id, self.info.version)
        self.check_inputs = InputChecker(self.signature)


class ActiveModel:
    """The one model that serves requests, replaceable while requests are running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def acquire(self) -> LoadedModel:
        """Take a reference on the active model.

        Raises:
            NoModelError: nothing is active.
        """
        with self._lock:
            model = self._current
            if model is None:
                raise NoModelError("no model is active")
            model.refs += 1
            return model

    def release(self, model: LoadedModel) -> None:
        """Drop a reference; the last one on a retired model closes its runtime."""
        with self._lock:
            model.refs -= 1
            close = model.retired and model.refs == 0 and not model.closed
            if close:
                model.closed = True
        if close:
            self._close(model)

    @contextmanager
    def using(self) -> Iterator[LoadedModel]:
        """``with active.using() as model:`` acquires and always releases."""
        model = self.acquire()
        try:
            yield model
        finally:
            self.release(model)

    def swap(self, new: LoadedModel | None) -> LoadedModel | None:
        """Make ``new`` the active model in one reference change; retire the old one.

        The old runtime is closed now if idle, else by its last request's release.
        Returns the model that was active.
        """
        with self._lock:
            old, self._current = self._current, new
            close = False
            if old is not None:
                old.retired = True
                close = old.refs == 0 and not old.closed
                if close:
                    old.closed = True
        if old is not None and close:
            self._close(old)
        return old

    @staticmethod
    def _close(model: LoadedModel) -> None:
        log.info("releasing %s %s", model.info.model_id, model.info.version)
        model.runtime.close()
