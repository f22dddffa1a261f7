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


def length_controlled_win_rate(preferences: Sequence[float], length_a: Sequence[float], length_b: Sequence[float],
                               resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, confidence: float = 0.95,
                               ridge: float = 1e-3) -> dict[str, float | int | None]:
    """The win rate of a over b had both answers been the same length (AlpacaEval's length control, in small).

    Each instruction's preference for a (1 win, 0.5 tie, 0 loss) is regressed by logistic regression (soft
    labels) on tanh(length difference / its standard deviation); the length-controlled win rate is the fitted
    preference at no length difference, sigmoid(intercept). `slope` > 0: the judge favours the longer answer.
    Interval: percentile bootstrap over instructions, refitted on every resample."""
    y = np.asarray(preferences, dtype=np.float64)
    if y.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "slope": None}
    difference = np.asarray(length_a, dtype=np.float64) - np.asarray(length_b, dtype=np.float64)
    scale = float(difference.std())
    # Equal differences everywhere: length cannot be told from quality, and the raw preference is all there is.
    x = np.tanh(difference / scale) if scale > 0 else np.zeros_like(difference)
    intercept, slope = _fit_logistic(y[None, :], x[None, :], ridge)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(resamples, y.size))
    draws = 1 / (1 + np.exp(-_fit_logistic(y[idx], x[idx], ridge)[0]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"mean": float(1 / (1 + np.exp(-intercept[0]))), "ci_low": float(low), "ci_high": float(high),
            "n": int(y.size), "slope": float(slope[0])}


def _fit_logistic(y: np.ndarray, x: np.ndarray, ridge: float, steps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Intercept and slope of p = sigmoid(b0 + b1 x) fitted to soft labels `y`, by Newton's method, one fit per
    row of `y` and `x` at once (a small ridge keeps separable data finite)."""
    b0 = np.zeros(y.shape[0])
    b1 = np.zeros(y.shape[0])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(b0[:, None] + b1[:, None] * x)))
        w = p * (1 - p)
        g0 = (y - p).sum(axis=1) - ridge * b0
        g1 = ((y - p) * x).sum(axis=1) - ridge * b1
        h00 = w.sum(axis=1) + ridge
        h01 = (w * x).sum(axis=1)
        h11 = (w * x * x).sum(axis=1) + ridge
        det = h00 * h11 - h01 * h01
        step0 = (h11 * g0 - h01 * g1) / det
        step1 = (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + step0, b1 + step1
        if np.abs(step0).max() < 1e-9 and np.abs(step1).max() < 1e-9:
            break
    return b0, b1
