from __future__ import annotations

from fineinstructions.records import Pair
from fineinstructions.stages.filter import FilterStage


def pair(doc: str, tid: str, score: int | None, coverage: float = 0.9, tokens: int = 40, doc_tokens: int = 100):
    return Pair(document_id=doc, template_id=tid, text="d", template="t", instantiated_instruction="q", answer="a",
                judge_score=score, excerpt_coverage=coverage, synthetic_token_count=tokens, token_count=doc_tokens)


def test_filter_applies_score_coverage_and_token_budget_best_first():
    batch = [
        pair("a", "low-score", 3),
        pair("a", "unjudged", None),
        pair("a", "low-coverage", 5, coverage=0.5),
        pair("a", "four", 4, tokens=40),
        pair("a", "five", 5, tokens=40),
        pair("a", "five-b", 5, tokens=40),  # would exceed document a's 100 tokens
        pair("b", "b-ok", 4, tokens=90, doc_tokens=100),
        pair("c", "too-big", 5, tokens=120, doc_tokens=100),
    ]
    result = FilterStage(min_score=4, min_coverage=0.8).process(batch)
    kept = {p.template_id for p in result.records}
    assert kept == {"five", "five-b", "b-ok"}
    reasons = {r.row["template_id"]: r.reason for r in result.rejected}
    assert reasons == {"low-score": "judge_score_below_threshold", "unjudged": "unjudged",
                       "low-coverage": "low_coverage", "four": "token_budget", "too-big": "token_budget"}
    for doc in "abc":
        spent = sum(p.synthetic_token_count for p in result.records if p.document_id == doc)
        assert spent <= 100


def test_filter_without_budget_and_with_pair_cap():
    batch = [pair("a", f"t{i}", 5, tokens=80) for i in range(4)]
    assert len(FilterStage(token_budget=False).process(batch).records) == 4
    capped = FilterStage(token_budget=False, max_pairs_per_document=2).process(batch)
    assert len(capped.records) == 2 and {r.reason for r in capped.rejected} == {"max_pairs_per_document"}
