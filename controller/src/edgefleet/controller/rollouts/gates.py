"""Rollout gates: whether a wave's own telemetry says it is safe to go on. Pure functions.

Gates compare the new version's figures on the wave's devices with the same devices' figures
for the version they ran before. Latency is judged on distributions: the histograms of every
window of each side merged (see :mod:`edgefleet.controller.telemetry.latency`), never on a mean
of per-window percentiles, which is not a percentile of anything (a tail on one busy device can
move it sevenfold while the p95 of the wave's requests stays put); v1 agents' summaries, which
cannot be merged, enter as their request-weighted mean, and the check says so.
A p95 regression is a breach only when it is both relative (``max_p95_regression``) and absolute
(``min_p95_regression_ms``), judged on at least ``min_requests`` requests on each side: a jump of
0.1 ms on a 0.1 ms model is noise, not a reason to roll back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.controller.fleet.selectors import parse_selector
from edgefleet.controller.telemetry.latency import MergedLatency
from edgefleet.shared.bounds import MAX_LATENCY_MS
from edgefleet.shared.histogram import Histogram
from edgefleet.shared.manifest import HealthPolicy

_DURATION_MS = {"ms": 1.0, "s": 1000.0}


class LatencyBudget(BaseModel):
    """The operator's latency budget for a class of devices, named by a label selector."""

    model_config = ConfigDict(frozen=True)

    selector: str = Field(min_length=1, max_length=256, examples=["board=pi4"])
    budget_ms: float = Field(gt=0.0, le=1e7)

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        parse_selector(value)
        return value

    @classmethod
    def parse(cls, spec: str) -> LatencyBudget:
        """``SELECTOR:BUDGET`` with BUDGET in ``ms`` or ``s``, e.g. ``board=pi4:150ms``.

        Raises:
            ValueError: not of that form.
        """
        selector, sep, budget = spec.rpartition(":")
        unit = next((u for u in ("ms", "s") if budget.strip().endswith(u)), None)
        if not sep or unit is None:
            raise ValueError(
                f"latency budget {spec!r}: expected SELECTOR:BUDGET, e.g. board=pi4:150ms"
            )
        try:
            value = float(budget.strip()[: -len(unit)]) * _DURATION_MS[unit]
        except ValueError:
            raise ValueError(f"latency budget {spec!r}: {budget!r} is not a duration") from None
        return cls(selector=selector.strip(), budget_ms=value)


class GatePolicy(BaseModel):
    """Thresholds of a rollout and what to do when one is breached."""

    model_config = ConfigDict(frozen=True)

    max_failures: str = Field(default="0", description="failed devices allowed: N or N%")
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p95_regression: float = Field(default=0.2, ge=0.0, le=1000.0)
    min_p95_regression_ms: float = Field(
        default=1.0,
        ge=0.0,
        le=1e7,
        description="a p95 rise breaches only when it is also more than this many ms",
    )
    soak_s: float = Field(default=60.0, ge=0.0, le=7 * 24 * 3600)
    min_requests: int = Field(
        default=20,
        ge=0,
        le=1_000_000_000,
        description="requests needed on each side (new, previous) to judge latency",
    )
    on_breach: Literal["pause", "rollback"] = "rollback"
    install_timeout_s: float = Field(
        default=900.0,
        gt=0,
        le=30 * 24 * 3600,
        description="a device sent its manifest and not converged after this long has failed",
    )
    min_converged: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="devices per wave that must converge; default: all that were online",
    )
    health_window_s: float = Field(
        default=60.0, gt=0, le=7 * 24 * 3600, description="device-side post-swap watch"
    )
    health_min_requests: int = Field(default=20, ge=0, le=1_000_000_000)
    health_max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    health_max_p95_regression: float = Field(default=0.5, ge=0.0, le=1000.0)
    health_min_p95_regression_ms: float = Field(default=1.0, ge=0.0, le=MAX_LATENCY_MS)
    latency_budgets: tuple[LatencyBudget, ...] = Field(
        default=(),
        max_length=64,
        description="operator budgets per device class; the first whose selector matches wins",
    )
    latency_ratio: float = Field(
        default=3.0,
        gt=1.0,
        le=1000.0,
        description="without a budget: candidate / active warm latency allowed on the device",
    )

    def latency_budget_for(
        self, labels: Mapping[str, str], facts: Mapping[str, set[str]]
    ) -> float | None:
        """The operator's budget for a device with these labels and facts, if one is set."""
        for budget in self.latency_budgets:
            if parse_selector(budget.selector).matches(labels, facts):
                return budget.budget_ms
        return None

    def health(self) -> HealthPolicy:
        """The post-swap watch the device runs, as signed into each manifest."""
        return HealthPolicy(
            window_s=self.health_window_s,
            min_requests=self.health_min_requests,
            max_error_rate=self.health_max_error_rate,
            max_p95_regression=self.health_max_p95_regression,
            min_p95_regression_ms=self.health_min_p95_regression_ms,
        )

    @field_validator("max_failures")
    @classmethod
    def _failures(cls, value: str) -> str:
        failures_allowed(value, 100)
        return value


def failures_allowed(spec: str, devices: int) -> int:
    """How many failed devices ``spec`` (``N`` or ``N%``) allows among ``devices``.

    Raises:
        ValueError: not a non-negative count or percentage.
    """
    text = spec.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return int(devices * pct / 100)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(
            f"max failures {spec!r} is not a count (3) or a percentage (10%)"
        ) from None


@dataclass(frozen=True, slots=True)
class LatencyWindow:
    """One telemetry window of a version on one device, as the gates read it: its histogram
    (wire v2), else its own p95 (a v1 agent's summary is all there is)."""

    requests: int
    errors: int
    p95_ms: float | None = None
    histogram: Histogram | None = None


@dataclass(frozen=True, slots=True)
class VersionFigures:
    """Summed telemetry of one version on a set of devices, its latency merged."""

    requests: int
    errors: int
    latency: MergedLatency = field(default_factory=MergedLatency)

    @classmethod
    def of_p95(cls, requests: int, errors: int, p95_ms: float | None) -> VersionFigures:
        """Figures known only by a p95 that stands for every request (a v1 summary)."""
        return combine_figures([LatencyWindow(requests, errors, p95_ms)])

    @property
    def p95_ms(self) -> float | None:
        return self.latency.percentile(0.95)

    @property
    def latency_requests(self) -> int:
        """The requests whose latency the p95 stands for."""
        return self.latency.samples


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str
    # What the check judged on (p95: both sides' figures and request counts).
    figures: Mapping[str, float | int | bool | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    checks: tuple[GateCheck, ...]

    @property
    def breaches(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        if self.passed:
            return "all gates passed"
        return "; ".join(c.detail for c in self.breaches)

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "checks": [
                {
                    "name": c.name,
                    "value": c.value,
                    "threshold": c.threshold,
                    "passed": c.passed,
                    "detail": c.detail,
                    **({"figures": dict(c.figures)} if c.figures else {}),
                }
                for c in self.checks
            ],
        }


def check_failures(
    policy: GatePolicy, failed: int, devices: int, examples: Sequence[str] = ()
) -> GateCheck:
    """Failed devices against the budget; ``examples`` (a few failed devices and why) are
    named in the detail, so the rollout's reason says what went wrong."""
    allowed = failures_allowed(policy.max_failures, devices)
    detail = f"{failed} of {devices} devices failed (allowed {allowed})"
    if examples and failed > allowed:
        more = f"; and {failed - len(examples)} more" if failed > len(examples) else ""
        detail += ": " + "; ".join(examples) + more
    return GateCheck("failures", float(failed), float(allowed), failed <= allowed, detail)


def evaluate_gates(
    policy: GatePolicy,
    *,
    failed: int,
    devices: int,
    new: VersionFigures,
    baseline: VersionFigures | None,
) -> GateResult:
    """Judge a wave: failed installs, error rate of the new version, p95 regression."""
    checks = [check_failures(policy, failed, devices)]
    if new.requests > 0:
        rate = new.errors / new.requests
        checks.append(
            GateCheck(
                "error_rate",
                rate,
                policy.max_error_rate,
                rate <= policy.max_error_rate,
                f"error rate {rate:.2%} over {new.requests} requests "
                f"(max {policy.max_error_rate:.2%})",
            )
        )
    checks.append(check_p95(policy, new, baseline))
    return GateResult(all(c.passed for c in checks), tuple(checks))


def check_p95(
    policy: GatePolicy, new: VersionFigures, baseline: VersionFigures | None
) -> GateCheck:
    """The new version's p95 against the previous one's, each from its merged distribution.

    A breach needs a rise over ``max_p95_regression`` *and* over ``min_p95_regression_ms``,
    with at least ``min_requests`` requests on each side; below that, the check passes and says
    it did not judge. Its detail states both figures and the request counts behind them.
    """
    before = baseline if baseline is not None else VersionFigures(0, 0)
    new_p95, base_p95 = new.p95_ms, before.p95_ms
    new_n, base_n = new.latency_requests, before.latency_requests
    exact = new.latency.exact and before.latency.exact
    figures: dict[str, float | int | bool | None] = {
        "new_p95_ms": new_p95,
        "previous_p95_ms": base_p95,
        "new_requests": new_n,
        "previous_requests": base_n,
        "min_p95_regression_ms": policy.min_p95_regression_ms,
        "exact": exact,
    }
    counts = f"{new_n} new and {base_n} previous requests"
    basis = (
        "merged histograms"
        if exact
        else "approximate: v1 agents' window p95s enter as their request-weighted mean"
    )
    if (
        new_p95 is None
        or base_p95 is None
        or new_n < max(1, policy.min_requests)
        or base_n < max(1, policy.min_requests)
    ):
        return GateCheck(
            "p95_regression", None, policy.max_p95_regression, True,
            f"p95 not judged: {counts}, {policy.min_requests} needed on each side", figures,
        )  # fmt: skip
    delta = new_p95 - base_p95
    # A previous p95 of 0 (every latency under the zero threshold): any rise is relative.
    regression = new_p95 / base_p95 - 1.0 if base_p95 > 0 else None
    relative = regression is None or regression > policy.max_p95_regression
    breached = relative and delta > policy.min_p95_regression_ms
    rise = f"{regression:+.0%}, " if regression is not None else ""
    figures["regression_ms"] = delta
    return GateCheck(
        "p95_regression",
        regression,
        policy.max_p95_regression,
        not breached,
        f"p95 {new_p95:.3f} ms vs {base_p95:.3f} ms before ({rise}{delta:+.3f} ms; a breach is "
        f"over +{policy.max_p95_regression:.0%} and over +{policy.min_p95_regression_ms:g} ms) "
        f"over {counts}, {basis}",
        figures,
    )


def combine_figures(windows: Iterable[LatencyWindow]) -> VersionFigures:
    """Sum windows' requests and errors and merge their latency: histograms exactly, v1 p95s
    weighted by their requests."""
    requests = errors = 0
    latency = MergedLatency()
    for window in windows:
        requests += window.requests
        errors += window.errors
        if window.histogram is not None:
            latency.add_histogram(window.histogram)
        elif window.p95_ms is not None and window.requests > 0:
            latency.add_summary(window.requests, None, window.p95_ms, None)
    return VersionFigures(requests, errors, latency)
