"""Confidence intervals: seeded percentile bootstrap over items, and the Wilson score interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                 confidence: float = 0.95,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float | int | None]:
    """{"mean", "ci_low", "ci_high", "n"}: the statistic (default: mean) of `values` with a percentile bootstrap
    interval over `resamples` resamples of the items. An empty input gives None figures; one item a zero-width
    interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    stat = statistic or (lambda x: x.mean(axis=-1))
    point = float(stat(data[None, :])[0])
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // data.size)  # bound the index matrix's memory on large inputs
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        idx = rng.integers(0, data.size, size=(count, data.size))
        draws[start : start + count] = stat(data[idx])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"mean": point, "ci_low": float(low), "ci_high": float(high), "n": int(data.size)}


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0, confidence: float = 0.95) -> dict[str, float | int | None]:
    """Bootstrap interval of mean(a - b) over paired items (the same instructions answered by two models)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    return bootstrap_ci([x - y for x, y in zip(a, b, strict=True)], resamples, seed, confidence)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> dict[str, float | int | None]:
    """{"rate", "ci_low", "ci_high", "n"}: the Wilson score interval of a binomial proportion (None when no trials)."""
    if successes < 0 or successes > trials:
        raise ValueError(f"successes must be within 0..trials, got {successes} of {trials}")
    if trials == 0:
        return {"rate": None, "ci_low": None, "ci_high": None, "n": 0}
    z = _normal_quantile(1 - (1 - confidence) / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return {"rate": p, "ci_low": max(0.0, centre - half), "ci_high": min(1.0, centre + half), "n": trials}


def _normal_quantile(p: float) -> float:
    """Standard normal quantile by bisection on erf (exact enough for interval widths)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
