"""SVG line charts rendered on the server: time axis, value axis with its unit, a legend, points
with hover titles, and vertical markers (model swaps, rollbacks). Pure functions of their input.

A point can be marked approximate (a latency percentile that v1 agents' summaries went into):
it is drawn hollow, and its title says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from edgefleet.controller.dashboard.html import e

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f")
TIME_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                43200, 86400, 172800, 604800)  # fmt: skip
MAX_POINT_DOTS = 400


APPROXIMATE_NOTE = "approximate: v1 agents' percentiles averaged"


@dataclass(frozen=True)
class Line:
    label: str
    t_ms: Sequence[int]
    values: Sequence[float | None]
    color: str
    dash: str = ""
    # Per point, True where the value is approximate; empty: every point is exact.
    approximate: Sequence[bool] = ()


@dataclass(frozen=True)
class VMarker:
    t_ms: int
    label: str
    kind: str  # a CSS class: swapped, rolled_back
    detail: str = ""


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (1, 2, 2.5 or 5 times a power of ten)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def time_ticks(start_ms: int, end_ms: int, count: int = 7) -> tuple[list[int], str]:
    """Tick times aligned to a round step, and the strftime format that suits the step."""
    span_s = max(1.0, (end_ms - start_ms) / 1000)
    step = next((s for s in TIME_STEPS_S if span_s / s <= count), TIME_STEPS_S[-1])
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
    first = math.ceil(start_ms / 1000 / step) * step
    ticks = list(range(int(first), int(end_ms / 1000) + 1, step))
    return [t * 1000 for t in ticks], fmt


def _fmt_value(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def line_chart(
    lines: Sequence[Line],
    *,
    name: str,
    unit: str,
    start_ms: int,
    end_ms: int,
    markers: Sequence[VMarker] = (),
    width: int = 760,
    height: int = 250,
    value_text: Callable[[float], str] = _fmt_value,
) -> str:
    """An ``<svg>`` chart; ``name`` becomes ``data-chart`` (tests and styles find it by that)."""
    left, right, top, bottom = 62, 14, 30, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for line in lines for v in line.values if v is not None]
    points = sum(1 for line in lines for v in line.values if v is not None)
    y_ticks = nice_ticks(0.0, max(values) * 1.08 if values else 1.0)
    y_max = y_ticks[-1] or 1.0
    mid_y = top + plot_h / 2
    span = max(1, end_ms - start_ms)

    def x(t: int) -> float:
        return left + plot_w * (t - start_ms) / span

    def y(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    out = [
        f'<svg class="chart" data-chart="{e(name)}" data-points="{points}" role="img" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" '
        f'aria-label="{e(name)} chart in {e(unit)}">'
    ]
    for tick in y_ticks:
        ty = y(tick)
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
        )
        out.append(
            f'<text class="tick" x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">'
            f"{e(value_text(tick))}</text>"
        )
    out.append(
        f'<text class="unit" x="12" y="{mid_y:.0f}" transform="rotate(-90 12 {mid_y:.0f})" '
        f'text-anchor="middle">{e(unit)}</text>'
    )
    ticks, fmt = time_ticks(start_ms, end_ms)
    for tick in ticks:
        tx = x(tick)
        label = datetime.fromtimestamp(tick / 1000, UTC).strftime(fmt)
        out.append(
            f'<line class="grid v" x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{top + plot_h}"/>'
        )
        out.append(
            f'<text class="tick" x="{tx:.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{label}</text>'
        )
    out.append(
        f'<text class="unit" x="{left + plot_w / 2:.0f}" y="{height - 6}" '
        'text-anchor="middle">time (UTC)</text>'
    )
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>')
    for marker in markers:
        if not start_ms <= marker.t_ms <= end_ms:
            continue
        mx = x(marker.t_ms)
        right_side = mx > left + plot_w * 0.85
        when = datetime.fromtimestamp(marker.t_ms / 1000, UTC).strftime("%H:%M:%S")
        out.append(
            f'<g class="marker {e(marker.kind)}"><title>{e(marker.label)} at {when} UTC'
            f"{' — ' + e(marker.detail) if marker.detail else ''}</title>"
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top - 4}" y2="{top + plot_h}"/>'
            f'<text x="{mx + (-3 if right_side else 3):.1f}" y="{top - 8}" '
            f'text-anchor="{"end" if right_side else "start"}">{e(marker.label)}</text></g>'
        )
    dots = points <= MAX_POINT_DOTS
    for line in lines:
        out.append(_path(line, x, y, dots, value_text, unit))
    if not values:
        out.append(
            f'<text class="empty" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
            'text-anchor="middle">no data in this range yet</text>'
        )
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><svg width="22" height="8"><line x1="0" x2="22" y1="4" y2="4" '
        f'stroke="{e(line.color)}" stroke-width="2.5" stroke-dasharray="{e(line.dash)}"/></svg>'
        f"{e(line.label)}</span>"
        for line in lines
    )
    caption = f'<figcaption class="legend">{legend}</figcaption>'
    return f'<figure class="chart-box">{"".join(out)}{caption}</figure>'


def _path(
    line: Line,
    x: Callable[[int], float],
    y: Callable[[float], float],
    dots: bool,
    value_text: Callable[[float], str],
    unit: str,
) -> str:
    segments: list[str] = []
    current: list[str] = []
    circles: list[str] = []
    approximate = line.approximate or [False] * len(line.values)
    for t, v, rough in zip(line.t_ms, line.values, approximate, strict=True):
        if v is None:
            if current:
                segments.append("M" + " L".join(current))
                current = []
            continue
        px, py = x(t), y(v)
        current.append(f"{px:.1f},{py:.1f}")
        if dots:
            when = datetime.fromtimestamp(t / 1000, UTC).strftime("%H:%M:%S")
            note = f" ({APPROXIMATE_NOTE})" if rough else ""
            circles.append(
                f'<circle class="point{" approx" if rough else ""}" cx="{px:.1f}" '
                f'cy="{py:.1f}" r="2.6"><title>{e(line.label)}: {e(value_text(v))} {e(unit)} '
                f"at {when} UTC{e(note)}</title></circle>"
            )
    if current:
        segments.append("M" + " L".join(current))
    path = (
        f'<path d="{" ".join(segments)}" fill="none" stroke="{e(line.color)}" stroke-width="2" '
        f'stroke-dasharray="{e(line.dash)}" stroke-linejoin="round"/>'
        if segments
        else ""
    )
    color = e(line.color)
    return f'<g class="series" stroke="{color}" fill="{color}">{path}{"".join(circles)}</g>'
