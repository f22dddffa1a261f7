"""Reference scores on known strings, and the confidence intervals on known outcomes."""

from __future__ import annotations

import math

import pytest

from fineinstructions.evaluation.scores import exact_match, lcs_length, normalize_answer, rouge_l, token_f1
from fineinstructions.evaluation.stats import bootstrap_ci, paired_bootstrap_ci, wilson_interval


def test_lcs_and_rouge_l_on_known_strings():
    assert lcs_length(["a", "b", "c", "d", "e"], ["a", "c", "e"]) == 3
    assert lcs_length([], ["a"]) == 0
    # LCS "the cat on the mat" (5 of 6 and 5 of 7 words): P=5/6, R=5/7
    expected = 2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7)
    assert rouge_l("The cat sat on the mat.", "the cat was lying on the mat") == pytest.approx(expected)
    assert rouge_l("Paris", "PARIS!") == 1.0  # lowercased words, punctuation dropped
    assert rouge_l("", "anything") == 0.0 and rouge_l("x y", "z") == 0.0
    assert rouge_l("a b", "b a") == pytest.approx(0.5)  # order matters: LCS 1 of 2


def test_squad_token_f1_and_exact_match():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # bags {eiffel, tower, in, paris} vs {eiffel, tower}: P=2/4, R=1
    assert token_f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3)
    assert token_f1("dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)  # bag counts are clipped
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.0, 1.0] * 50
    first = bootstrap_ci(values, seed=3)
    assert first == bootstrap_ci(values, seed=3)
    assert first["mean"] == 0.5 and first["n"] == 100
    assert first["ci_low"] < 0.5 < first["ci_high"]
    # standard error sqrt(0.25 / 100) = 0.05: the 95% interval is about +-0.1
    assert 0.07 < first["ci_high"] - 0.5 < 0.13
    assert bootstrap_ci([1.0, 1.0, 1.0]) == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 3}
    assert bootstrap_ci([])["mean"] is None
    diff = paired_bootstrap_ci([1, 2, 3], [0, 1, 2])
    assert diff["mean"] == 1.0 and diff["ci_low"] == diff["ci_high"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1], [1, 2])


def test_wilson_interval_known_values():
    ci = wilson_interval(8, 10)
    # Wilson 95% for 8/10: [0.490, 0.943]
    assert ci["rate"] == 0.8
    assert ci["ci_low"] == pytest.approx(0.4902, abs=1e-3) and ci["ci_high"] == pytest.approx(0.9433, abs=1e-3)
    zero = wilson_interval(0, 5)
    assert zero["ci_low"] == pytest.approx(0.0, abs=1e-12) and 0.4 < zero["ci_high"] < 0.45  # 0.4345
    assert wilson_interval(0, 0)["rate"] is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert not math.isnan(wilson_interval(5, 5)["ci_low"])
