"""Capped exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``random(0, min(cap, base * factor**attempt))`` seconds, with a floor.

    The floor keeps a tight reconnect loop from spinning; the jitter spreads a fleet that lost
    its broker at the same moment over the whole window instead of one second.
    """

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        *,
        factor: float = 2.0,
        floor_s: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or cap_s < base_s or factor < 1.0:
            raise ValueError(f"invalid backoff: base {base_s}, cap {cap_s}, factor {factor}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.factor = factor
        self.floor_s = min(floor_s, cap_s)
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap_s, self.base_s * self.factor ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """The next delay in seconds; each call widens the window until the cap."""
        delay = max(self.floor_s, self._rng.uniform(0.0, self.ceiling()))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from the base delay (after a success)."""
        self.attempt = 0
