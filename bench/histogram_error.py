"""Relative error of latency percentiles read from merged exponential histograms, against the
exact percentiles of the same samples. Prints JSON on its last line.

    python bench/histogram_error.py [--samples 20000] [--seed 0]

Each distribution's sample is split at random into windows (as devices and telemetry windows
split a fleet's requests), each window recorded at the agent's scale, the windows merged, and
p50/p90/p95/p99/p99.9 read from the merge and compared with the nearest-rank percentiles of the
sample itself. Goal: the largest error stays within ``relative_error(SCALE)`` (1.08 %), and
the merge's buckets equal those of one histogram of the whole sample.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable

from edgefleet.shared.histogram import SCALE, Histogram, relative_error

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


def distributions(rng: random.Random) -> dict[str, Callable[[], float]]:
    return {
        "lognormal(0, 0.25)": lambda: rng.lognormvariate(0.0, 0.25),
        "lognormal(0, 1)": lambda: rng.lognormvariate(0.0, 1.0),
        "lognormal(-3, 2)": lambda: rng.lognormvariate(-3.0, 2.0),
        "uniform(0.1, 50)": lambda: rng.uniform(0.1, 50.0),
        "exponential(mean 4 ms)": lambda: rng.expovariate(0.25) + 0.002,
        "pareto(1.5) tail": lambda: 0.2 * rng.paretovariate(1.5),
        "bimodal 1 ms / 80 ms": lambda: (
            rng.gauss(1.0, 0.05) if rng.random() < 0.97 else rng.gauss(80.0, 5.0)
        ),
    }


def nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def measure(values: list[float], rng: random.Random) -> tuple[float, bool]:
    windows = rng.randint(2, 200)
    cuts = sorted(rng.randrange(len(values)) for _ in range(windows - 1))
    merged = Histogram()
    for start, stop in zip([0, *cuts], [*cuts, len(values)], strict=True):
        merged.merge(Histogram.of_values(values[start:stop]))
    whole = Histogram.of_values(values)
    exact_merge = (merged.offset, merged.counts, merged.zero_count, merged.count) == (
        whole.offset, whole.counts, whole.zero_count, whole.count,
    )  # fmt: skip
    ordered = sorted(values)
    worst = 0.0
    for q in QUANTILES:
        exact = nearest_rank(ordered, q)
        estimate = merged.percentile(q)
        assert estimate is not None
        worst = max(worst, abs(estimate - exact) / exact)
    return worst, exact_merge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bound = relative_error(SCALE)
    results: dict[str, float] = {}
    all_exact = True
    for name, draw in distributions(rng).items():
        values = [max(draw(), 0.0015) for _ in range(args.samples)]
        worst, exact = measure(values, rng)
        all_exact &= exact
        results[name] = worst
        print(f"{name:24s} max relative error {worst * 100:.3f} %  merge exact: {exact}")
    worst = max(results.values())
    print(
        json.dumps(
            {
                "scale": SCALE,
                "bound_pct": round(bound * 100, 3),
                "max_relative_error_pct": round(worst * 100, 3),
                "ratio_to_bound": round(worst / bound, 3),
                "merges_exact": all_exact,
                "samples": args.samples,
            }
        )
    )


if __name__ == "__main__":
    main()
