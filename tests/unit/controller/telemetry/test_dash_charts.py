"""Server-rendered SVG charts: axes with units, a point per value, markers, escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from edgefleet.controller.dashboard.charts import Line, VMarker, line_chart, nice_ticks, time_ticks

T0 = 1_795_000_000_000  # ms


def render(**kwargs) -> str:
    lines = [Line("tiny:1 p95", [T0, T0 + 10_000, T0 + 20_000], [1.0, None, 3.0], "#123456")]
    return line_chart(lines, name="latency", unit="ms", start_ms=T0, end_ms=T0 + 60_000, **kwargs)


def test_chart_is_well_formed_svg_with_points_axes_and_units():
    html = render(markers=[VMarker(T0 + 15_000, "⇄ 2", "swapped", "swapped to <2>")])
    root = ET.fromstring(html)  # the figure parses as XML: nothing unbalanced or unescaped
    svg = root.find("svg")
    assert svg is not None
    assert svg.get("data-chart") == "latency"
    assert svg.get("data-points") == "2"
    assert len(svg.findall(".//circle")) == 2  # None leaves a gap, not a point
    texts = [t.text for t in svg.iter("text")]
    assert "ms" in texts
    assert "time (UTC)" in texts
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d", t or "") for t in texts)  # time ticks
    assert svg.find(".//g[@class='marker swapped']") is not None
    assert "swapped to &lt;2&gt;" in html


def test_empty_chart_says_so():
    html = line_chart([], name="cpu", unit="%", start_ms=T0, end_ms=T0 + 60_000)
    assert "no data in this range yet" in html
    assert 'data-points="0"' in html


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 7.3) == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 0.42)[-1] >= 0.42
    ticks, fmt = time_ticks(T0, T0 + 3_600_000)
    assert fmt == "%H:%M"
    assert all(t % 600_000 == 0 for t in ticks)
    assert len(ticks) <= 7
