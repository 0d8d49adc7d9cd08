"""The p95 gate on merged distributions: it judges the p95 of every request of each side, not a
mean of per-window p95s; it needs a relative and an absolute regression on enough requests, and
says what it judged on."""

from __future__ import annotations

import math
import random

import pytest

from edgefleet.controller.rollouts.gates import (
    GatePolicy,
    LatencyWindow,
    VersionFigures,
    combine_figures,
    evaluate_gates,
)
from edgefleet.shared.histogram import Histogram, relative_error

POLICY = GatePolicy(max_p95_regression=0.2, min_requests=20)  # default floor: 1 ms
WINDOWS = 6  # telemetry windows per device and version


def exact_p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def latencies(
    rng: random.Random, n: int, ms: float, *, tail: float = 0.0, slow_ms: float = 0.0
) -> list[float]:
    """``n`` latencies around ``ms`` (±5 %), a fraction ``tail`` of them, evenly spread, around
    ``slow_ms``."""
    values = [ms * rng.uniform(0.95, 1.05) for _ in range(n)]
    for k in range(round(tail * n)):
        values[int(k / tail)] = slow_ms * rng.uniform(0.95, 1.05)
    return values


def windows_of(values: list[float], windows: int = WINDOWS) -> list[LatencyWindow]:
    """One device's windows of a version, as a v2 agent reports them: a histogram each."""
    size = math.ceil(len(values) / windows)
    parts = [values[i : i + size] for i in range(0, len(values), size)]
    return [LatencyWindow(len(p), 0, None, Histogram.of_values(p)) for p in parts]


def as_v1(windows: list[LatencyWindow]) -> list[LatencyWindow]:
    """The same windows reduced to what the old gate used: each window's p95, weighted by its
    requests."""
    return [LatencyWindow(w.requests, w.errors, w.histogram.percentile(0.95)) for w in windows]


def fleet(rng: random.Random, busy: dict[str, float], idle: dict[str, float]) -> list[list[float]]:
    """One busy device (1,200 requests) and 19 idle ones (24 requests each)."""
    devices = [latencies(rng, 1200, busy["ms"], tail=busy["tail"], slow_ms=busy["slow_ms"])]
    devices += [latencies(rng, 24, idle["ms"]) for _ in range(19)]
    return devices


def judge(
    new: list[list[float]], before: list[list[float]], policy: GatePolicy = POLICY
) -> tuple[object, object, float, float]:
    """(merged verdict, mean-of-p95s verdict, exact new p95, exact previous p95)."""
    new_windows = [w for device in new for w in windows_of(device)]
    old_windows = [w for device in before for w in windows_of(device)]
    merged = evaluate_gates(
        policy, failed=0, devices=len(new), new=combine_figures(new_windows),
        baseline=combine_figures(old_windows),
    )  # fmt: skip
    mean = evaluate_gates(
        policy, failed=0, devices=len(new), new=combine_figures(as_v1(new_windows)),
        baseline=combine_figures(as_v1(old_windows)),
    )  # fmt: skip
    everything_new = [v for device in new for v in device]
    everything_before = [v for device in before for v in device]
    return merged, mean, exact_p95(everything_new), exact_p95(everything_before)


def p95_check(result):
    (check,) = [c for c in result.checks if c.name == "p95_regression"]
    return check


def test_a_busy_device_tail_under_5_percent_of_the_fleet_is_not_a_p95_regression():
    """The busy device's new version is slow on 6 % of its requests, 4.3 % of the fleet's: the
    fleet's p95 is unchanged, but that device's window p95s are the slow ones and carry 76 % of
    the weight, so their mean says p95 went up sevenfold."""
    rng = random.Random(14)
    before = fleet(rng, {"ms": 2.0, "tail": 0.0, "slow_ms": 0.0}, {"ms": 2.0})
    new = fleet(rng, {"ms": 2.0, "tail": 0.06, "slow_ms": 20.0}, {"ms": 2.0})

    merged, mean, exact_new, exact_before = judge(new, before)

    check = p95_check(merged)
    new_p95, old_p95 = check.figures["new_p95_ms"], check.figures["previous_p95_ms"]
    # The merged p95 is the fleet's p95, within the histogram's stated error.
    assert abs(new_p95 - exact_new) <= relative_error(5) * exact_new
    assert abs(old_p95 - exact_before) <= relative_error(5) * exact_before
    assert exact_new < 2.2  # the true fleet p95 did not move
    assert merged.passed, merged.summary()
    assert check.passed
    assert (check.figures["new_requests"], check.figures["previous_requests"]) == (1656, 1656)
    assert check.figures["exact"] is True
    assert "over 1656 new and 1656 previous requests, merged histograms" in check.detail
    # The old figure, a request-weighted mean of window p95s, would have rolled it back.
    old = p95_check(mean)
    assert not mean.passed
    assert old.figures["new_p95_ms"] > 14.0  # (1200 * 20 + 456 * 2) / 1656 = 15.0
    assert old.figures["exact"] is False
    print(f"merged p95 {new_p95:.3f} vs {old_p95:.3f} ms (exact {exact_new:.3f} vs "
          f"{exact_before:.3f}); mean of window p95s {old.figures['new_p95_ms']:.3f} vs "
          f"{old.figures['previous_p95_ms']:.3f} ms")  # fmt: skip


def test_idle_devices_slowing_down_are_a_regression_the_mean_of_p95s_hides():
    """The new version is 75 % slower on the 19 idle devices: 28 % of the fleet's requests, so
    its p95 is theirs. Weighted by requests, their p95s barely move the mean."""
    rng = random.Random(15)
    policy = POLICY.model_copy(update={"max_p95_regression": 0.5})
    before = fleet(rng, {"ms": 2.0, "tail": 0.0, "slow_ms": 0.0}, {"ms": 2.0})
    new = fleet(rng, {"ms": 2.0, "tail": 0.0, "slow_ms": 0.0}, {"ms": 3.5})

    merged, mean, exact_new, _ = judge(new, before, policy)

    check = p95_check(merged)
    assert abs(check.figures["new_p95_ms"] - exact_new) <= relative_error(5) * exact_new
    assert not merged.passed
    assert check.value == pytest.approx(0.75, abs=0.06)
    assert "p95_regression" in {c.name for c in merged.breaches}
    assert "over 1656 new and 1656 previous requests" in merged.summary()
    old = p95_check(mean)
    assert mean.passed, mean.summary()  # (1200 * 2 + 456 * 3.5) / 1656 = 2.4: +21 %
    assert old.value < 0.5
    new_p95, old_p95 = check.figures["new_p95_ms"], check.figures["previous_p95_ms"]
    mean_new, mean_old = old.figures["new_p95_ms"], old.figures["previous_p95_ms"]
    print(f"merged p95 {new_p95:.3f} vs {old_p95:.3f} ms (exact {exact_new:.3f}); mean of "
          f"window p95s {mean_new:.3f} vs {mean_old:.3f} ms")  # fmt: skip


def test_a_tenth_of_a_millisecond_on_a_fast_model_is_not_a_regression():
    """The rollback this gate used to make: 0.208 vs 0.107 ms p95 over 21 requests."""
    rng = random.Random(21)
    before = [0.1 * rng.uniform(0.9, 1.0) for _ in range(19)] + [0.107, 0.107]
    new = [0.2 * rng.uniform(0.9, 1.0) for _ in range(19)] + [0.208, 0.208]
    result = evaluate_gates(
        POLICY, failed=0, devices=1, new=combine_figures(windows_of(new, 3)),
        baseline=combine_figures(windows_of(before, 3)),
    )  # fmt: skip

    check = p95_check(result)
    assert result.passed, result.summary()
    assert check.passed
    assert check.figures["new_p95_ms"] == pytest.approx(0.208, rel=relative_error(5))
    assert check.figures["previous_p95_ms"] == pytest.approx(0.107, rel=relative_error(5))
    assert check.value > POLICY.max_p95_regression  # relative: +94 %, but only +0.1 ms
    assert check.figures["regression_ms"] < POLICY.min_p95_regression_ms
    assert "over 21 new and 21 previous requests" in check.detail
    assert "a breach is over +20% and over +1 ms" in check.detail


def test_a_real_regression_on_enough_requests_fails_and_names_its_counts():
    rng = random.Random(7)
    before = latencies(rng, 500, 2.0)
    new = latencies(rng, 400, 4.0)
    result = evaluate_gates(
        POLICY, failed=0, devices=1, new=combine_figures(windows_of(new)),
        baseline=combine_figures(windows_of(before)),
    )  # fmt: skip

    assert not result.passed
    (breach,) = result.breaches
    assert breach.name == "p95_regression"
    assert breach.value == pytest.approx(1.0, abs=0.1)
    assert breach.figures["regression_ms"] > 1.0
    summary = result.summary()
    assert "(+" in summary
    assert "over 400 new and 500 previous requests, merged histograms" in summary
    as_dict = result.as_dict()["checks"]
    (stored,) = [c for c in as_dict if c["name"] == "p95_regression"]
    assert stored["figures"]["new_requests"] == 400
    assert stored["figures"]["previous_requests"] == 500


@pytest.mark.parametrize(
    ("before_ms", "new_ms", "passed"),
    [
        (100.0, 110.0, True),  # +10 ms but +10 %: absolute alone is not a breach
        (0.1, 0.5, True),  # +400 % but +0.4 ms: relative alone is not a breach
        (2.0, 3.5, False),  # +75 % and +1.5 ms: both
    ],
)
def test_a_breach_needs_both_a_relative_and_an_absolute_rise(before_ms, new_ms, passed):
    rng = random.Random(3)
    result = evaluate_gates(
        POLICY, failed=0, devices=1, new=combine_figures(windows_of(latencies(rng, 200, new_ms))),
        baseline=combine_figures(windows_of(latencies(rng, 200, before_ms))),
    )  # fmt: skip
    assert result.passed is passed, result.summary()


def test_the_floor_is_a_policy_setting():
    rng = random.Random(4)
    new = combine_figures(windows_of(latencies(rng, 200, 0.5)))
    before = combine_figures(windows_of(latencies(rng, 200, 0.1)))
    strict = POLICY.model_copy(update={"min_p95_regression_ms": 0.1})
    assert evaluate_gates(POLICY, failed=0, devices=1, new=new, baseline=before).passed
    assert not evaluate_gates(strict, failed=0, devices=1, new=new, baseline=before).passed
    assert GatePolicy().min_p95_regression_ms == 1.0


def test_too_few_requests_on_either_side_are_not_judged():
    rng = random.Random(5)
    busy = combine_figures(windows_of(latencies(rng, 200, 50.0)))
    few = combine_figures(windows_of(latencies(rng, 19, 2.0), 2))
    for new, before in ((busy, few), (few, busy)):
        check = p95_check(evaluate_gates(POLICY, failed=0, devices=1, new=new, baseline=before))
        assert check.passed
        assert check.value is None
        assert check.detail.startswith("p95 not judged: ")
        assert "20 needed on each side" in check.detail


def test_v1_summaries_on_either_side_make_the_check_say_it_is_approximate():
    rng = random.Random(6)
    v2 = windows_of(latencies(rng, 300, 2.0))
    v1 = [LatencyWindow(100, 0, 4.0), LatencyWindow(100, 0, 4.2)]
    result = evaluate_gates(
        POLICY, failed=0, devices=2, new=combine_figures([*v2, *v1]),
        baseline=combine_figures(windows_of(latencies(rng, 300, 2.0))),
    )  # fmt: skip
    check = p95_check(result)
    assert check.figures["exact"] is False
    assert check.figures["new_requests"] == 500
    assert "approximate: v1 agents' window p95s enter as their request-weighted mean" in (
        check.detail
    )
    # The merged part (300 at ~2 ms) and the summaries (200 at ~4.1 ms), weighted by requests.
    assert check.figures["new_p95_ms"] == pytest.approx((300 * 2.1 + 200 * 4.1) / 500, rel=0.03)


def test_figures_survive_the_rollouts_json_column():
    """``as_dict`` goes into ``rollouts.gate`` (JSON): every figure is a finite number, a bool
    or None."""
    rng = random.Random(8)
    result = evaluate_gates(
        POLICY, failed=0, devices=1, new=combine_figures(windows_of(latencies(rng, 100, 9.0))),
        baseline=VersionFigures.of_p95(100, 0, 0.0),  # a previous p95 of 0: no relative figure
    )  # fmt: skip
    check = p95_check(result)
    assert not check.passed  # from 0: any rise over the floor is a breach
    assert check.value is None
    for value in check.figures.values():
        assert value is None or isinstance(value, bool | int) or math.isfinite(value)
