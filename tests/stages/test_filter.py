from __future__ import annotations

from fineinstructions.records import Pair
from fineinstructions.stages.filter import FilterStage
from fineinstructions.stages.pair_dedup import PairDeduplicator


def pair(doc: str, tid: str, score: int | None, coverage: float = 0.9, tokens: int = 40, doc_tokens: int = 100,
         instruction: str = "q", answer: str = "a"):
    return Pair(document_id=doc, template_id=tid, text="d", template="t", instantiated_instruction=instruction,
                answer=answer, judge_score=score, excerpt_coverage=coverage, synthetic_token_count=tokens,
                token_count=doc_tokens)


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
    result = FilterStage(min_score=4, min_coverage=0.8, budget_carry_over=False).process(batch)
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


ANSWER = ("The okapi is a giraffid artiodactyl mammal native to the northeast of the Democratic Republic of the "
          "Congo in central Africa, where it lives in dense forest.")


def test_duplicates_are_dropped_across_shards_and_only_kept_pairs_are_remembered():
    dedup = PairDeduplicator(0.8)
    shard_1 = [
        pair("a", "t1", 5, instruction="What is an okapi?", answer=ANSWER),
        pair("b", "t2", 4, instruction="what is an OKAPI", answer=ANSWER),  # exact after normalisation
        pair("c", "t3", 5, instruction="What is an okapi?", answer=ANSWER + " It eats leaves."),  # near
        pair("d", "t4", 5, instruction="What is an okapi?", answer="A forest animal of the Congo with striped legs."),
        pair("e", "big", 5, tokens=500, instruction="Where do okapis live?", answer=ANSWER[:90]),  # over budget
    ]
    first = FilterStage(deduplicator=dedup).process(shard_1)
    assert {p.template_id for p in first.records} == {"t1", "t4"}
    reasons = {r.row["template_id"]: (r.reason, r.row.get("duplicate_of")) for r in first.rejected}
    assert reasons == {"t2": ("duplicate_pair", "a/t1"), "t3": ("near_duplicate_pair", "a/t1"),
                       "big": ("token_budget", None)}
    # The over-budget pair never entered the dataset, so a later copy of it is kept.
    second = FilterStage(deduplicator=dedup).process(
        [pair("f", "t5", 4, instruction="Where do okapis live?", answer=ANSWER[:90]),
         pair("g", "t6", 4, instruction="What is an okapi?", answer=ANSWER)])
    assert [p.template_id for p in second.records] == ["t5"]
    # Resuming: a fresh deduplicator that remembers the committed shards decides the same way.
    resumed = PairDeduplicator(0.8)
    resumed.remember(first.records)
    resumed.remember(first.records)  # idempotent
    again = FilterStage(deduplicator=resumed).process(
        [pair("f", "t5", 4, instruction="Where do okapis live?", answer=ANSWER[:90]),
         pair("g", "t6", 4, instruction="What is an okapi?", answer=ANSWER)])
    assert [p.template_id for p in again.records] == ["t5"]


def test_same_instruction_with_different_answers_is_not_a_duplicate():
    dedup = PairDeduplicator(0.8)
    batch = [pair(d, "t", 5, instruction="Who founded the city?", answer=f"It was founded by {name} long ago "
                  f"according to the records of {place}.")
             for d, name, place in [("a", "Romulus", "Livy"), ("b", "Alexander the Great", "Arrian of Nicomedia")]]
    assert len(FilterStage(deduplicator=dedup).process(batch).records) == 2


def kept_ids(stage: FilterStage, batch: list[Pair]) -> list[str]:
    return [p.template_id for p in stage.process(batch).records]


def test_budget_a_document_leaves_unused_lets_the_next_keep_more():
    batch = [pair("a", "a1", 5, tokens=40, doc_tokens=100),  # 60 tokens of a's budget left over
             pair("b", "b1", 5, tokens=80, doc_tokens=100), pair("b", "b2", 4, tokens=70, doc_tokens=100)]
    assert kept_ids(FilterStage(budget_carry_over=False), batch) == ["a1", "b1"]
    carried = FilterStage()  # on by default
    result = carried.process(batch)
    assert [p.template_id for p in result.records] == ["a1", "b1", "b2"]  # 150 <= 100 + 60
    assert result.counters == {"budget_carry_tokens_drawn": 50.0}
    # The carry flows forward only: b first spends its own budget, a's leftover comes too late for it.
    assert kept_ids(carried, batch[1:] + batch[:1]) == ["b1", "a1"]
    # A document whose pairs all failed the judge leaves its whole budget to the next one.
    failed = [pair("x", "x1", 2, doc_tokens=100)] + batch[1:]
    assert kept_ids(carried, failed) == ["b1", "b2"]


def test_a_document_draws_at_most_max_carry_ratio_of_its_own_tokens():
    huge = [pair("big", "big1", 5, tokens=10, doc_tokens=1000)]  # leaves 990 tokens
    small = [pair("small", f"s{i}", 5, tokens=40, doc_tokens=50) for i in range(6)]
    assert kept_ids(FilterStage(budget_carry_over=False), huge + small) == ["big1", "s0"]
    assert kept_ids(FilterStage(), huge + small) == ["big1", "s0", "s1"]  # ratio 1: 50 + 50 tokens
    assert kept_ids(FilterStage(max_carry_ratio=0.5), huge + small) == ["big1", "s0"]  # 50 + 25 < 80
    assert kept_ids(FilterStage(max_carry_ratio=None), huge + small) == ["big1"] + [f"s{i}" for i in range(6)]
    # What a document drew is gone: a 990-token carry, capped per document, still serves the next one.
    second = [pair("small-2", f"t{i}", 5, tokens=40, doc_tokens=50) for i in range(3)]
    assert kept_ids(FilterStage(), huge + small + second)[-2:] == ["t0", "t1"]


def test_each_shard_starts_without_carry_so_a_resumed_shard_is_the_same(tmp_path):
    from fineinstructions.executors.commit import commit_shard, read_committed

    shard_0 = [pair("a", "a1", 5, tokens=10, doc_tokens=500)]
    shard_1 = [pair("b", "b1", 5, tokens=80, doc_tokens=100), pair("b", "b2", 5, tokens=80, doc_tokens=100)]
    one = FilterStage()
    outputs = [commit_shard(one, shard, records, tmp_path, 8)[0] for shard, records in enumerate((shard_0, shard_1))]
    assert [p.template_id for p in outputs[1]] == ["b1"]  # shard 0's leftover does not reach shard 1
    (tmp_path / "shard-000001.parquet").unlink()  # killed before shard 1 was committed: a fresh stage redoes it
    redone, _ = commit_shard(FilterStage(), 1, shard_1, tmp_path, 8)
    assert redone == outputs[1]
    committed = read_committed(tmp_path, 1, Pair)
    assert committed is not None and committed[0] == outputs[1]
