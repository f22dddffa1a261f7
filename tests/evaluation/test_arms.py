"""Models grouped into arms: seed suffixes, who meets whom head-to-head, figures pooled over seeds."""

from __future__ import annotations

import pytest

from fineinstructions.evaluation.arms import (
    arm_measures,
    arms_of,
    model_arm,
    pairings,
    pooled_preferences,
    pooled_values,
)


def test_model_names_carry_arm_and_seed() -> None:
    assert model_arm("fineinstructions-seed2") == model_arm("fineinstructions-seed2")
    one = model_arm("fineinstructions-seed2")
    assert (one.arm, one.seed) == ("fineinstructions", 2)
    assert (model_arm("pairs").arm, model_arm("pairs").seed) == ("pairs", None)
    assert (model_arm("nemotron_qa-seed10").arm, model_arm("nemotron_qa-seed10").seed) == ("nemotron_qa", 10)
    assert list(arms_of(["a-seed0", "b-seed0", "a-seed1", "b-seed1"])) == ["a", "b"]


def test_the_anchor_meets_every_other_arm_seed_against_seed() -> None:
    names = ["fi-seed0", "fi-seed1", "docs-seed0", "docs-seed1", "wrap-seed0", "wrap-seed1"]
    assert pairings(names) == [("fi-seed0", "docs-seed0"), ("fi-seed1", "docs-seed1"),
                               ("fi-seed0", "wrap-seed0"), ("fi-seed1", "wrap-seed1")]
    assert pairings(["pairs", "documents"]) == [("pairs", "documents")]
    # a seed the anchor lacks meets the first model
    assert pairings(["fi-seed0", "docs-seed0", "docs-seed3"]) == [("fi-seed0", "docs-seed0"),
                                                                   ("fi-seed0", "docs-seed3")]
    assert pairings([]) == []
    # models all of one arm (two seeds of one run given with --model): the first two meet
    assert pairings(["fi-seed1", "fi-seed2", "fi-seed3"]) == [("fi-seed1", "fi-seed2")]


def test_values_are_averaged_over_seeds_per_item_then_bootstrapped() -> None:
    per_model = {"a-seed0": {"q1": 1.0, "q2": 3.0}, "a-seed1": {"q1": 3.0, "q2": 5.0}, "b": {"q1": 2.0}}
    pooled = pooled_values(per_model, ["a-seed0", "a-seed1", "b"], resamples=200)
    assert pooled["a"]["mean"] == pytest.approx(3.0) and pooled["a"]["n"] == 2 and pooled["a"]["models"] == 2
    assert pooled["a"]["per_model"] == {"a-seed0": 2.0, "a-seed1": 4.0}
    assert pooled["a"]["ci_low"] <= 3.0 <= pooled["a"]["ci_high"]
    assert pooled["b"]["mean"] == 2.0 and pooled["b"]["ci_low"] == pooled["b"]["ci_high"] == 2.0


def test_preferences_pool_per_arm_with_length_control() -> None:
    prefs = [("fi-seed0", "docs-seed0", {"q1": 1.0, "q2": 1.0, "q3": 0.0}),
             ("fi-seed1", "docs-seed1", {"q1": 1.0, "q2": 0.5, "q3": 0.0}),
             ("fi-seed0", "wrap-seed0", {"q1": 0.5})]
    lengths = {"fi-seed0": {"q1": 10, "q2": 10, "q3": 10}, "fi-seed1": {"q1": 10, "q2": 10, "q3": 10},
               "docs-seed0": {"q1": 5, "q2": 30, "q3": 10}, "docs-seed1": {"q1": 5, "q2": 30, "q3": 10},
               "wrap-seed0": {"q1": 10}}
    pooled = pooled_preferences(prefs, lengths, resamples=200)
    assert set(pooled) == {"docs", "wrap"}
    docs = pooled["docs"]
    assert docs["anchor"] == "fi" and docs["models"] == 2
    assert docs["win_rate"]["mean"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert docs["per_model"] == {"docs-seed0": pytest.approx(2 / 3), "docs-seed1": pytest.approx(0.5)}
    assert docs["length_controlled_win_rate"]["n"] == 3
    assert pooled["wrap"]["win_rate"]["mean"] == 0.5


def _ci(mean: float) -> dict[str, float]:
    return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 3}


def test_arm_measures_read_pooled_scores_and_two_model_scores() -> None:
    pooled = {"models": [{"name": n} for n in ("fi-seed0", "docs-seed0", "fi-seed1", "docs-seed1")],
              "reference_graded": {"arms": {"fi": _ci(3.0), "docs": _ci(1.5)}},
              "single": {"arms": {"fi": _ci(4.0), "docs": _ci(2.0)}},
              "reference": {"arms": {"rouge_l": {"fi": _ci(0.2), "docs": _ci(0.1)}}},
              "pairwise": {"arms": {"docs": {"win_rate": _ci(0.7), "length_controlled_win_rate": _ci(0.6)}}}}
    measures = arm_measures(pooled)
    assert measures["fi"]["reference_grade"]["mean"] == 3.0 and measures["fi"]["win_rate"] is None
    assert measures["docs"]["win_rate"]["mean"] == 0.7 and measures["docs"]["lc_win_rate"]["mean"] == 0.6
    assert measures["docs"]["rouge_l"]["mean"] == 0.1 and measures["docs"]["single_rating"]["mean"] == 2.0
    two = {"models": [{"name": "pairs"}, {"name": "documents"}],
           "single": {"mean_rating": {"pairs": _ci(3.0), "documents": _ci(2.0)}},
           "reference": {"per_model": {"pairs": {"rouge_l": _ci(0.3)}, "documents": {"rouge_l": _ci(0.2)}}},
           "pairwise": {"win_rate": _ci(0.6), "length_controlled_win_rate": _ci(0.55), "model_b": "documents"}}
    measures = arm_measures(two)
    assert measures["documents"]["win_rate"]["mean"] == 0.6 and measures["pairs"]["single_rating"]["mean"] == 3.0
    assert measures["pairs"]["reference_grade"] is None and measures["documents"]["rouge_l"]["mean"] == 0.2
