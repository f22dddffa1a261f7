"""Models grouped into arms: which models are compared head-to-head, and each arm's figures pooled over its seeds.

A training run with several seeds names its models `<arm>-seed<S>` (`training.run.TrainConfig.model_name`); a
model without that suffix is an arm of its own. The head-to-head compares the first model's arm (the anchor,
FineInstructions in an experiment) with every other arm, seed against seed. An arm's figure for an instruction is
the mean over its seeds, and the interval is a bootstrap over instructions of those means; each seed's own mean is
reported beside it, so the spread between seeds is visible too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fineinstructions.evaluation.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, length_controlled_win_rate

_SEED_SUFFIX = re.compile(r"^(?P<arm>.+)-seed(?P<seed>\d+)$")


@dataclass(frozen=True)
class ModelArm:
    """A model's arm and seed (None: a model given without a seed)."""

    model: str
    arm: str
    seed: int | None


def model_arm(name: str) -> ModelArm:
    """`fineinstructions-seed2` -> arm `fineinstructions`, seed 2; any other name is its own arm."""
    found = _SEED_SUFFIX.match(name)
    if found is None:
        return ModelArm(name, name, None)
    return ModelArm(name, found["arm"], int(found["seed"]))


def arms_of(names: Sequence[str]) -> dict[str, list[ModelArm]]:
    """The models of each arm, arms in the order their first model appears."""
    arms: dict[str, list[ModelArm]] = {}
    for name in names:
        one = model_arm(name)
        arms.setdefault(one.arm, []).append(one)
    return arms


def pairings(names: Sequence[str]) -> list[tuple[str, str]]:
    """(anchor model, other model) for every model of another arm than the first model's, matched by seed (a
    model whose seed the anchor arm lacks meets the first model). Models that are all of one arm: the first two
    models meet."""
    if not names:
        return []
    anchor = model_arm(names[0]).arm
    arms = arms_of(names)
    by_seed = {m.seed: m.model for m in arms[anchor]}
    matched = [(by_seed.get(m.seed, names[0]), m.model) for arm, models in arms.items() if arm != anchor
               for m in models]
    return matched or ([(names[0], names[1])] if len(names) > 1 else [])


def pooled_values(per_model: Mapping[str, Mapping[str, float]], names: Sequence[str],
                  resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Per arm: the mean over instructions of the seed-averaged values (`per_model`: model -> item -> value), its
    bootstrap interval over instructions, and each seed's own mean."""
    out: dict[str, Any] = {}
    for arm, models in arms_of(names).items():
        items: dict[str, list[float]] = {}
        seed_means: dict[str, float | None] = {}
        for m in models:
            values = per_model.get(m.model) or {}
            for item, value in values.items():
                items.setdefault(item, []).append(value)
            seed_means[m.model] = sum(values.values()) / len(values) if values else None
        averaged = [sum(v) / len(v) for v in items.values()]
        out[arm] = bootstrap_ci(averaged, resamples, seed) | {"models": len(models), "per_model": seed_means}
    return out


def pooled_preferences(preferences: Iterable[tuple[str, str, Mapping[str, float]]],
                       lengths: Mapping[str, Mapping[str, int]], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> dict[str, Any]:
    """Per other arm: the anchor's win rate pooled over seeds and its length-controlled win rate.

    `preferences`: (anchor model, other model, item -> preference for the anchor in [0, 1]); `lengths`: model ->
    item -> answer words. An instruction's preference and length difference are averaged over the seeds first."""
    grouped: dict[str, list[tuple[str, str, Mapping[str, float]]]] = {}
    for anchor, other, by_item in preferences:
        grouped.setdefault(model_arm(other).arm, []).append((anchor, other, by_item))
    out: dict[str, Any] = {}
    for arm, rows in grouped.items():
        items: dict[str, list[tuple[float, float, float]]] = {}
        seed_rates: dict[str, float | None] = {}
        for anchor, other, by_item in rows:
            for item, preference in by_item.items():
                items.setdefault(item, []).append((preference, lengths.get(anchor, {}).get(item, 0),
                                                   lengths.get(other, {}).get(item, 0)))
            seed_rates[other] = sum(by_item.values()) / len(by_item) if by_item else None
        means = [tuple(sum(col) / len(col) for col in zip(*values, strict=True)) for values in items.values()]
        prefs = [m[0] for m in means]
        out[arm] = {"anchor": model_arm(rows[0][0]).arm, "models": len(rows), "per_model": seed_rates,
                    "win_rate": bootstrap_ci(prefs, resamples, seed),
                    "length_controlled_win_rate": length_controlled_win_rate(
                        prefs, [m[1] for m in means], [m[2] for m in means], resamples, seed)}
    return out


MEASURES = (
    ("reference_grade", "graded vs reference (1-10)"),
    ("win_rate", "anchor's head-to-head win rate"),
    ("lc_win_rate", "anchor's length-controlled win rate"),
    ("single_rating", "single-answer rating (1-10)"),
    ("rouge_l", "ROUGE-L F1 vs reference"),
)


def arm_measures(scores: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each arm's figures from an evaluation's scores.json, pooled over its seeds: the reference-graded and single
    ratings, ROUGE-L, and the anchor arm's (raw and length-controlled) win rate over it. A figure an evaluation did
    not measure is None; with two models (no pooling) the models are the arms."""
    names = [m["name"] for m in scores.get("models") or []]
    arms = list(arms_of(names))
    out: dict[str, dict[str, Any]] = {arm: dict.fromkeys(key for key, _ in MEASURES) for arm in arms}

    def ratings(key: str) -> dict[str, Any]:
        result = scores.get(key) or {}
        if result.get("arms"):
            return dict(result["arms"])
        return {model_arm(name).arm: stat for name, stat in (result.get("mean_rating") or {}).items()}

    for key, measure in (("reference_graded", "reference_grade"), ("single", "single_rating")):
        for arm, stat in ratings(key).items():
            if arm in out:
                out[arm][measure] = stat
    reference = scores.get("reference") or {}
    rouge = (reference.get("arms") or {}).get("rouge_l") or {
        model_arm(name).arm: stat.get("rouge_l") for name, stat in (reference.get("per_model") or {}).items()}
    for arm, stat in rouge.items():
        if arm in out:
            out[arm]["rouge_l"] = stat
    pairwise = scores.get("pairwise") or {}
    if pairwise.get("arms"):
        for arm, result in pairwise["arms"].items():
            out[arm] |= {"win_rate": result["win_rate"], "lc_win_rate": result["length_controlled_win_rate"]}
    elif pairwise.get("win_rate") and pairwise.get("model_b"):
        arm = model_arm(pairwise["model_b"]).arm
        if arm in out:
            out[arm] |= {"win_rate": pairwise["win_rate"],
                         "lc_win_rate": pairwise.get("length_controlled_win_rate")}
    return out
