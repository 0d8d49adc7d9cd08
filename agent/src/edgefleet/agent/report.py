"""Events (QoS 1) and the retained device state (QoS 1), built and published in one place.

States are numbered (``seq``) and published under one lock, so they leave in the order of their
numbers whichever thread publishes them.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from edgefleet.agent import measured
from edgefleet.agent.fetch import Publisher
from edgefleet.agent.sequence import StateSequence
from edgefleet.shared.manifest import Manifest
from edgefleet.shared.messages import (
    DesiredError,
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    Outcome,
    Progress,
    SlotInfo,
)
from edgefleet.shared.topics import Topics
from edgefleet.shared.wire import encode

log = logging.getLogger(__name__)


class Reporter:
    """Publishes what the agent does, for the controller and the operator."""

    def __init__(
        self, session: Publisher, topics: Topics, device_id: str, sequence: StateSequence
    ) -> None:
        self.session = session
        self.topics = topics
        self.device_id = device_id
        self.sequence = sequence
        self._state_lock = threading.Lock()

    def event(
        self,
        kind: EventType,
        *,
        manifest: Manifest | SlotInfo | None = None,
        reason: str | None = None,
        figures: dict[str, float] | None = None,
    ) -> Event:
        event = Event(
            device_id=self.device_id,
            type=kind,
            at=datetime.now(UTC),
            model_id=manifest.model_id if manifest else None,
            version=manifest.version if manifest else None,
            serial=manifest.serial if manifest else None,
            reason=reason[:2048] if reason else None,
            figures=measured.figures(figures),
        )
        level = logging.WARNING if kind in _BAD else logging.INFO
        log.log(level, "event %s %s", kind.value, reason or "")
        self.session.publish(self.topics.events(self.device_id), encode(event), qos=1)
        return event

    def state_message(
        self,
        status: DeviceStatus,
        *,
        active: SlotInfo | None,
        previous: SlotInfo | None,
        last_serial: int,
        updating_to: SlotInfo | None = None,
        detail: str | None = None,
        last_outcome: Outcome | None = None,
        progress: Progress | None = None,
        desired_error: DesiredError | None = None,
    ) -> DeviceState:
        """A state without ``seq``: :meth:`publish_state` or :meth:`numbered` gives it one."""
        return DeviceState(
            device_id=self.device_id,
            status=status,
            active=active,
            previous=previous,
            last_serial=last_serial,
            updating_to=updating_to,
            detail=detail[:1024] if detail else None,
            updated_at=datetime.now(UTC),
            last_outcome=last_outcome,
            progress=progress,
            desired_error=desired_error,
        )

    def numbered(self, state: DeviceState) -> DeviceState:
        """``state`` with the next ``seq`` (for a state published elsewhere, e.g. at shutdown)."""
        return state.model_copy(update={"seq": self.sequence.next()})

    def publish_state(self, state: DeviceState) -> DeviceState:
        """Number ``state`` and publish it retained; return what was published."""
        with self._state_lock:
            numbered = self.numbered(state)
            self.session.publish(
                self.topics.state(self.device_id), encode(numbered), qos=1, retain=True
            )
        return numbered


_BAD = {
    EventType.MANIFEST_REFUSED,
    EventType.DOWNLOAD_FAILED,
    EventType.VERIFY_FAILED,
    EventType.LOAD_FAILED,
    EventType.VALIDATION_FAILED,
    EventType.ROLLED_BACK,
    EventType.SLOT_FALLBACK,
    EventType.COMMAND_REFUSED,
    EventType.ERROR,
}
