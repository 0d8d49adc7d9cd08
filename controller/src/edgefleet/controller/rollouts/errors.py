"""Errors of rollout requests: each names what was wrong, for a 4xx or a CLI exit code."""

from __future__ import annotations

from edgefleet.controller.errors import ControllerError


class RolloutError(ControllerError):
    """A rollout request cannot be carried out."""


class RolloutNotFoundError(RolloutError):
    def __init__(self, rollout_id: int) -> None:
        super().__init__(f"no rollout {rollout_id}")
        self.rollout_id = rollout_id


class RolloutStateError(RolloutError):
    """The action does not apply to the rollout's current status."""

    def __init__(self, rollout_id: int, status: str, action: str) -> None:
        super().__init__(f"rollout {rollout_id} is {status}; cannot {action}")
        self.rollout_id = rollout_id
        self.status = status
        self.action = action


class NoDevicesError(RolloutError):
    def __init__(self, selector: str) -> None:
        super().__init__(f"selector {selector!r} matches no known device")
        self.selector = selector
