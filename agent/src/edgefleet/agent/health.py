"""Post-swap health watch: compare the new version with the one it replaced, decide to keep
or roll back. Pure logic over metrics snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.agent.metrics import VersionKey, VersionStats
from edgefleet.shared.manifest import HealthPolicy


@dataclass(frozen=True, slots=True)
class RollbackVerdict:
    """Why the new version must go, with the figures that show it."""

    reason: str
    figures: dict[str, float]


@dataclass
class HealthWatch:
    """Watches one freshly swapped-in version for ``policy.window_s`` seconds."""

    new: VersionKey
    previous: VersionKey
    policy: HealthPolicy
    baseline: VersionStats
    started: float

    def check(self, stats: VersionStats, now: float) -> RollbackVerdict | bool:
        """``RollbackVerdict`` to roll back, ``True`` when the window passed cleanly, else
        ``False`` (keep watching)."""
        policy = self.policy
        if stats.requests >= max(1, policy.min_requests):
            rate = stats.error_rate
            if rate > policy.max_error_rate and rate > self.baseline.error_rate:
                return RollbackVerdict(
                    f"error rate {rate:.3f} over {stats.requests} requests exceeds "
                    f"{policy.max_error_rate} (previous version {self.baseline.error_rate:.3f})",
                    {
                        "error_rate": rate,
                        "requests": float(stats.requests),
                        "errors": float(stats.errors),
                        "previous_error_rate": self.baseline.error_rate,
                        "max_error_rate": policy.max_error_rate,
                    },
                )
        if now - self.started < policy.window_s:
            return False
        enough = max(1, policy.min_requests)
        if stats.requests >= enough and self.baseline.requests >= enough:
            p95 = stats.latency.percentile(0.95)
            before = self.baseline.latency.percentile(0.95)
            if (
                before > 0
                and p95 > before * (1.0 + policy.max_p95_regression)
                and p95 - before > policy.min_p95_regression_ms
            ):
                return RollbackVerdict(
                    f"p95 latency {p95:.3f} ms over {stats.requests} requests regressed more "
                    f"than {policy.max_p95_regression:.0%} and {policy.min_p95_regression_ms} ms "
                    f"over the previous {before:.3f} ms ({self.baseline.requests} requests)",
                    {
                        "p95_ms": p95,
                        "previous_p95_ms": before,
                        "requests": float(stats.requests),
                        "previous_requests": float(self.baseline.requests),
                    },
                )
        return True
