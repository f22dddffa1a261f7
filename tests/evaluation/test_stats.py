"""Intervals and the length-controlled win rate on constructed preferences."""

from __future__ import annotations

import numpy as np

from fineinstructions.evaluation.stats import bootstrap_ci, length_controlled_win_rate


def _lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(10, 300, n), rng.integers(10, 300, n)


def test_a_judge_that_only_rewards_length_is_controlled_to_about_a_coin_flip():
    la, lb = _lengths(400)
    longer_wins = (la > lb).astype(float)
    raw = bootstrap_ci(longer_wins)["mean"]
    controlled = length_controlled_win_rate(longer_wins, la, lb, resamples=300)
    assert controlled["slope"] > 5  # the judge follows length
    assert controlled["ci_low"] < 0.5 < controlled["ci_high"] and abs(controlled["mean"] - 0.5) < 0.15
    assert raw is not None and abs(raw - 0.5) < 0.1  # lengths drawn alike: raw is near a coin flip too

    a_longer = la + 150  # now a is always the longer answer: the raw win rate says a is better, control says not
    raw_biased = bootstrap_ci((a_longer > lb).astype(float))["mean"]
    biased = length_controlled_win_rate((a_longer > lb).astype(float), a_longer, lb, resamples=300)
    assert raw_biased is not None and raw_biased > 0.8 and biased["mean"] < raw_biased - 0.2


def test_a_better_model_keeps_its_win_rate_when_length_says_nothing():
    la, lb = _lengths(400, seed=1)
    rng = np.random.default_rng(2)
    better = (rng.random(400) < 0.8).astype(float)
    controlled = length_controlled_win_rate(better, la, lb, resamples=300)
    assert 0.72 < controlled["mean"] < 0.88 and abs(controlled["slope"]) < 1
    assert controlled["ci_low"] < controlled["mean"] < controlled["ci_high"] and controlled["n"] == 400


def test_equal_length_differences_leave_the_raw_preference():
    result = length_controlled_win_rate([1.0, 1.0, 0.5, 0.0], [20] * 4, [10] * 4, resamples=100)
    assert abs(result["mean"] - 0.625) < 1e-3 and result["slope"] == 0.0  # (a small ridge pulls toward 0.5)
    assert length_controlled_win_rate([], [], [])["mean"] is None
