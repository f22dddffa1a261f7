"""Choosing the similarity floor (`match.min_score`) from a run: null and kept rates by match score, and the
floor that removes the most nulls for at most 10 % of the kept pairs."""

from __future__ import annotations

from pathlib import Path

import yaml

from fineinstructions.io.run_folder import RunFolder, shard_output_path, shard_rejects_path
from fineinstructions.io.writers import write_records, write_rows
from fineinstructions.records import Match, Pair
from fineinstructions.reporting import load_run, render_html
from fineinstructions.reporting.floor import ScoreBins, propose_floor, read_score_bins, score_bins


def bins(candidates: list[int], nulls: list[int], kept: list[int]) -> ScoreBins:
    edges = [round(0.3 + 0.1 * i, 6) for i in range(len(candidates) + 1)]
    return ScoreBins(edges, candidates, nulls, kept)


def test_the_floor_removes_the_most_nulls_for_at_most_a_tenth_of_the_kept_pairs():
    counts = bins(candidates=[20, 20, 20, 20, 20], nulls=[8, 5, 2, 0, 0], kept=[1, 2, 3, 10, 14])  # 30 kept
    proposal = propose_floor(counts)
    assert proposal is not None
    # Floor 0.4 loses 1 kept pair, 0.5 loses 3 (10 %), 0.6 would lose 6: 0.5 removes 13 of 15 nulls.
    assert (proposal.floor, proposal.nulls_removed, proposal.nulls) == (0.5, 13, 15)
    assert (proposal.kept_lost, proposal.kept, proposal.candidates_removed, proposal.candidates) == (3, 30, 40, 100)
    assert "13 of 15 nulls (86.7 %)" in proposal.describe() and "3 of 30 kept pairs (10.0 %)" in proposal.describe()
    assert propose_floor(counts, max_kept_loss=0.05).floor == 0.4  # type: ignore[union-attr]


def test_of_floors_removing_as_many_nulls_the_lowest_wins_and_none_when_nothing_helps():
    plateau = bins(candidates=[10, 10, 10, 10], nulls=[4, 0, 0, 0], kept=[0, 0, 0, 10])
    assert propose_floor(plateau).floor == 0.4  # type: ignore[union-attr]  # 0.5 and 0.6 remove no more nulls
    assert propose_floor(bins([10, 10], [0, 0], [5, 5])) is None  # no null to remove
    assert propose_floor(bins([10, 10], [5, 0], [0, 0])) is None  # no kept pair to measure the loss against
    assert propose_floor(bins([10, 10], [0, 5], [5, 5])) is None  # the nulls sit above every kept pair
    assert propose_floor(ScoreBins([], [], [], [])) is None


def test_scores_are_binned_on_the_candidates_span():
    counted = score_bins([0.42, 0.45, 0.51, 0.58, 0.6], nulls=[0.42, 0.45, 0.3], kept=[0.58, 0.6], bins=2)
    assert counted.edges == [0.4, 0.5, 0.6]  # round edges, 0.1 apart
    assert (counted.candidates, counted.nulls, counted.kept) == ([2, 3], [3, 0], [0, 2])
    assert counted.null_rate == [1.5, 0.0] and counted.kept_rate == [0.0, 2 / 3]
    assert score_bins([], [], []).candidates == []


def write_run(root: Path) -> None:
    """A run folder holding one finished shard: 40 candidates from score 0.30 to 0.69, low scores null."""
    folder = RunFolder(root)
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"match": {"min_score": 0.0}}))
    (root / "fingerprint").write_text("f" * 16 + "\n")
    scores = [round(0.3 + 0.01 * i, 4) for i in range(40)]
    matches = [Match(document_id=f"d{i}", template_id=f"t{i}", score=s, rank=0) for i, s in enumerate(scores)]
    write_records(shard_output_path(folder.stage_dir("match", 0), 0), matches, Match)
    write_rows(shard_rejects_path(folder.stage_dir("instantiate", 0), 0),
               [m.model_dump(exclude={"text"}) | {"reason": "null" if m.score < 0.4 else "answer_too_short"}
                for m in matches if m.score < 0.45])
    kept = [Pair(document_id=m.document_id, template_id=m.template_id, text="", template="t",
                 instantiated_instruction="q", answer="a", judge_score=5, match_score=m.score)
            for m in matches if m.score >= 0.45 or m.score == 0.35]
    write_records(shard_output_path(folder.stage_dir("filter", 0), 0), kept, Pair)


def test_a_run_report_shows_the_rates_by_score_and_proposes_a_floor(tmp_path):
    root = tmp_path / "run"
    write_run(root)
    counted = read_score_bins(RunFolder(root), [shard_output_path(RunFolder(root).stage_dir("filter", 0), 0)], bins=8)
    assert sum(counted.candidates) == 40 and sum(counted.nulls) == 10 and sum(counted.kept) == 26
    assert counted.null_rate[0] == 1.0 and counted.kept_rate[-1] == 1.0
    view = load_run(root)
    assert view.score_bins is not None and sum(view.score_bins.nulls) == 10
    proposal = propose_floor(view.score_bins)
    assert proposal is not None and proposal.nulls_removed == 10 and proposal.kept_lost == 1
    html = render_html(view)
    assert '<section id="match-floor">' in html and "Proposed floor" in html
    assert escape_free(proposal.describe()) in html


def escape_free(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
