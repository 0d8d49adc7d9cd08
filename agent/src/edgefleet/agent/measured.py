"""Fitting what the device measures into the wire's bounds, before a message is built.

A bogus sensor, a stuck clock or a NaN in a validation figure must never keep the agent from
reporting: out-of-range readings are clamped (or, where "unknown" exists, dropped), so every
message the agent builds passes the bounds of :mod:`edgefleet.shared.bounds`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from edgefleet.shared.bounds import (
    MAX_CELSIUS,
    MAX_FIGURE,
    MAX_LATENCY_MS,
    MAX_LATENCY_SUM_MS,
    MAX_PERCENT,
    MAX_PROCESS_CPU_PERCENT,
    MAX_THROUGHPUT_RPS,
    MIN_CELSIUS,
)

MAX_FIGURES = 64
MAX_FIGURE_NAME = 64


def clamp(value: float, low: float, high: float) -> float:
    """``value`` within ``[low, high]``; NaN becomes ``low``."""
    if math.isnan(value):
        return low
    return min(high, max(low, value))


def latency_ms(value: float) -> float:
    return clamp(value, 0.0, MAX_LATENCY_MS)


def latency_sum_ms(value: float) -> float:
    return clamp(value, 0.0, MAX_LATENCY_SUM_MS)


def percent(value: float) -> float:
    return clamp(value, 0.0, MAX_PERCENT)


def process_percent(value: float) -> float:
    return clamp(value, 0.0, MAX_PROCESS_CPU_PERCENT)


def throughput(value: float) -> float:
    return clamp(value, 0.0, MAX_THROUGHPUT_RPS)


def celsius(value: float | None) -> float | None:
    """A temperature, or None when the sensor reads something no device survives."""
    if value is None or not math.isfinite(value) or not MIN_CELSIUS <= value <= MAX_CELSIUS:
        return None
    return value


def figures(values: Mapping[str, float] | None) -> dict[str, float]:
    """Event figures the wire accepts: finite, clamped, short names, at most 64."""
    out: dict[str, float] = {}
    for name, value in (values or {}).items():
        if len(out) >= MAX_FIGURES:
            break
        if math.isfinite(value):
            out[name[:MAX_FIGURE_NAME]] = clamp(value, -MAX_FIGURE, MAX_FIGURE)
    return out
