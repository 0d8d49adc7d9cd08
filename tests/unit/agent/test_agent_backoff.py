"""edgefleet.agent.backoff: capped, jittered, exponential."""

from __future__ import annotations

import random

import pytest

from edgefleet.agent.backoff import Backoff


def test_delays_stay_under_a_growing_capped_ceiling():
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(12):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert set(ceilings[4:]) == {8.0}


def test_jitter_spreads_a_fleet():
    delays = [Backoff(1.0, 60.0, rng=random.Random(seed)).next_delay() for seed in range(200)]
    assert max(delays) - min(delays) > 0.8  # not every device waits the same time


def test_reset_and_floor():
    backoff = Backoff(1.0, 4.0, floor_s=0.2, rng=random.Random(3))
    for _ in range(5):
        assert backoff.next_delay() >= 0.2
    backoff.reset()
    assert backoff.ceiling() == 1.0


def test_rejects_nonsense():
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(2.0, 1.0)
