"""Wave plans such as ``1,10%,50%,100%``: parsing and sizing, pure."""

from __future__ import annotations

import math


class WaveSpecError(ValueError):
    """A wave specification that cannot be parsed."""


def parse_waves(spec: str, fleet_size: int) -> list[int]:
    """Cumulative device counts per wave for a fleet of ``fleet_size`` devices.

    Each term is an absolute count (``1``) or a percentage of the fleet (``10%``); counts are
    cumulative, the canary wave comes first, and a final wave covering the whole fleet is added
    when the spec stops short. Waves that would add nobody are dropped.

    Raises:
        WaveSpecError: a term is neither a positive count nor a percentage in (0, 100].
    """
    if fleet_size <= 0:
        return []
    cumulative: list[int] = []
    for raw in spec.split(","):
        term = raw.strip()
        try:
            if term.endswith("%"):
                pct = float(term[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                count = math.ceil(fleet_size * pct / 100)
            else:
                count = int(term)
                if count <= 0:
                    raise ValueError
        except ValueError:
            raise WaveSpecError(
                f"bad wave {term!r} in {spec!r}: use counts like 1 or percentages like 10%"
            ) from None
        count = min(count, fleet_size)
        if not cumulative or count > cumulative[-1]:
            cumulative.append(count)
    if not cumulative or cumulative[-1] < fleet_size:
        cumulative.append(fleet_size)
    return cumulative
