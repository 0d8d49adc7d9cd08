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


class RolloutConflictError(RolloutError):
    """Another rollout still drives some of the devices: one rollout per device at a time."""

    def __init__(self, other_id: int, status: str, devices: list[str], action: str) -> None:
        shown = ", ".join(devices[:5]) + (
            f" and {len(devices) - 5} more" if len(devices) > 5 else ""
        )
        super().__init__(
            f"rollout {other_id} ({status}) holds {shown}; cannot {action} (abort rollout "
            f"{other_id} first, or wait for it to end)"
            if status != "newer"
            else f"rollout {other_id} has since taken over {shown}; cannot {action}"
        )
        self.other_id = other_id
        self.devices = devices
