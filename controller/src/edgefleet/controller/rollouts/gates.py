"""Rollout gates: whether a wave's own telemetry says it is safe to go on. Pure functions.

Gates compare the new version's figures on the wave's devices with the same devices' figures
for the version they ran before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.controller.fleet.selectors import parse_selector
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
    soak_s: float = Field(default=60.0, ge=0.0, le=7 * 24 * 3600)
    min_requests: int = Field(
        default=20, ge=0, le=1_000_000_000, description="below this, latency is not judged"
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
class VersionFigures:
    """Summed telemetry of one version on a set of devices."""

    requests: int
    errors: int
    p95_ms: float | None  # request-weighted mean of window p95s


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str


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
    base_p95 = baseline.p95_ms if baseline is not None else None
    base_requests = baseline.requests if baseline is not None else 0
    if (
        new.p95_ms is not None
        and base_p95 is not None
        and base_p95 > 0
        and new.requests >= policy.min_requests
        and base_requests >= policy.min_requests
    ):
        regression = new.p95_ms / base_p95 - 1.0
        checks.append(
            GateCheck(
                "p95_regression",
                regression,
                policy.max_p95_regression,
                regression <= policy.max_p95_regression,
                f"p95 {new.p95_ms:.3f} ms vs {base_p95:.3f} ms before "
                f"({regression:+.0%}, max +{policy.max_p95_regression:.0%})",
            )
        )
    return GateResult(all(c.passed for c in checks), tuple(checks))


def combine_figures(windows: Sequence[tuple[int, int, float | None]]) -> VersionFigures:
    """Sum ``(requests, errors, p95_ms)`` windows; p95 is weighted by requests."""
    requests = sum(w[0] for w in windows)
    errors = sum(w[1] for w in windows)
    weighted = [(w[0], w[2]) for w in windows if w[2] is not None and w[0] > 0]
    weight = sum(n for n, _ in weighted)
    p95 = sum(n * p for n, p in weighted) / weight if weight else None
    return VersionFigures(requests, errors, p95)
