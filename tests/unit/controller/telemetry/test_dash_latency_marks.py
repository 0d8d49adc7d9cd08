"""What the dashboard shows of merged latency: approximate points (v1 summaries) drawn hollow
with a title that says so, and the rollout page's p95 gate with its absolute floor, a check
that could not judge marked "not judged", and the counts it judged on."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from edgefleet.controller.dashboard.charts import APPROXIMATE_NOTE, Line, line_chart
from edgefleet.controller.dashboard.rollout_page import render_rollout
from edgefleet.controller.rollouts.gates import (
    GatePolicy,
    GateResult,
    LatencyWindow,
    VersionFigures,
    check_p95,
    combine_figures,
)
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.shared.histogram import Histogram

T0 = 1_795_000_000_000  # ms


def test_approximate_points_are_hollow_and_say_why():
    line = Line("m:1 p95", [T0, T0 + 10_000, T0 + 20_000], [1.0, 2.0, 3.0], "#123456",
                approximate=[False, True, False])  # fmt: skip
    html = line_chart([line], name="latency", unit="ms", start_ms=T0, end_ms=T0 + 60_000)
    svg = ET.fromstring(html).find("svg")
    assert svg is not None
    circles = svg.findall(".//circle")
    assert [c.get("class") for c in circles] == ["point", "point approx", "point"]
    titles = [c.findtext("title") or "" for c in circles]
    assert APPROXIMATE_NOTE in titles[1]
    assert APPROXIMATE_NOTE not in titles[0] + titles[2]


def gate_of(new: VersionFigures, before: VersionFigures, policy: GatePolicy) -> dict[str, object]:
    check = check_p95(policy, new, before)
    return {"wave": 0, **GateResult(check.passed, (check,)).as_dict()}


def render(sessions, policy: GatePolicy, gate: dict[str, object]) -> str:
    with sessions.begin() as session:
        rollout = RolloutRow(
            model="m", version="2", selector="*", waves=[1], wave_spec="1",
            policy=policy.model_dump(mode="json"), status="running", gate=gate,
        )  # fmt: skip
        rollout.devices.append(RolloutDeviceRow(device_id="d", wave=0, state="active"))
        session.add(rollout)
        session.flush()
        return render_rollout(session, rollout)


def test_the_rollout_page_shows_the_floor_and_what_the_p95_gate_judged_on(sessions):
    policy = GatePolicy(min_p95_regression_ms=2.5)
    before = combine_figures([LatencyWindow(300, 0, None, Histogram.of_values([2.0] * 300))])
    new = combine_figures([LatencyWindow(200, 0, None, Histogram.of_values([9.0] * 200))])
    page = render(sessions, policy, gate_of(new, before, policy))
    assert "and at least (absolute)" in page
    assert "2.5 ms" in page
    assert "over 200 new and 300 previous requests, merged histograms" in page
    assert ">breached<" in page

    few = combine_figures([LatencyWindow(5, 0, None, Histogram.of_values([9.0] * 5))])
    page = render(sessions, policy, gate_of(few, before, policy))
    assert ">not judged<" in page
    assert "p95 not judged: 5 new and 300 previous requests, 20 needed on each side" in page
