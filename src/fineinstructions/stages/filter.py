"""Stage 7: keep pairs that pass the judge and the coverage gate, within each document's token budget.

In the pipeline, pair dedup across the whole dataset is its own step after the filter, on compact
signatures, across ranks (ranks/signatures.py); a filter given a `PairDeduplicator` also drops pairs that
repeat one it kept before (a single process's in-order dedup, e.g. for a stand-alone stage call)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fineinstructions.records import Pair
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.pair_dedup import PairDeduplicator

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext


class FilterStage(Stage[Pair, Pair]):
    """Per document, best-judged pairs first, keep pairs while their generated tokens fit the document's budget.

    A batch must hold every pair of the documents in it (executors shard by document; the stage sees a
    whole shard as one batch). A document's budget is its own `token_count`; with `budget_carry_over`, the
    budget a document leaves unused carries over to the next documents of the batch, in the order they
    first appear in it: document d may keep pairs up to token_count(d) + draw(d) tokens, where draw(d) =
    min(carry, max_carry_ratio * token_count(d)) (no cap when the ratio is None), and then
    carry <- carry + token_count(d) - kept tokens(d), never below 0. The carry starts at 0 in each batch
    (shard), so a shard's output depends on its own pairs only and a resumed run gives the same shards.
    Documents that reach the filter with no pair past the judge and coverage gates leave their whole budget.
    """

    name = "filter"
    input_type = Pair
    output_type = Pair
    whole_shard = True  # a document's pairs must meet in one batch

    def __init__(self, min_score: int = 4, min_coverage: float = 0.8, token_budget: bool = True,
                 max_pairs_per_document: int | None = None, deduplicator: PairDeduplicator | None = None,
                 budget_carry_over: bool = True, max_carry_ratio: float | None = 1.0):
        self.min_score = min_score
        self.min_coverage = min_coverage
        self.token_budget = token_budget
        self.max_pairs_per_document = max_pairs_per_document
        self.deduplicator = deduplicator  # pairs kept before, when this filter deduplicates in order
        self.budget_carry_over = budget_carry_over
        self.max_carry_ratio = max_carry_ratio

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> FilterStage:
        fc = config.filter
        return cls(config.judge.min_score, config.instantiate.min_coverage, fc.token_budget,
                   fc.max_pairs_per_document, budget_carry_over=fc.budget_carry_over,
                   max_carry_ratio=fc.max_carry_ratio)

    def draw(self, carry: int, document_tokens: int) -> int:
        """Tokens of the carried budget a document of `document_tokens` tokens may spend beyond its own."""
        if not self.budget_carry_over:
            return 0
        if self.max_carry_ratio is None:
            return carry
        return min(carry, int(self.max_carry_ratio * document_tokens))

    def process(self, batch: Sequence[Pair]) -> StageResult[Pair]:
        rejected: list[Rejected] = []
        by_document: dict[str, list[Pair]] = {}
        document_tokens: dict[str, int] = {}  # every document of the batch, in first-seen order
        for pair in batch:
            document_tokens.setdefault(pair.document_id, pair.token_count)
            if pair.judge_score is None:
                rejected.append(Rejected(pair.model_dump(), "unjudged"))
            elif pair.judge_score < self.min_score:
                rejected.append(Rejected(pair.model_dump(), "judge_score_below_threshold"))
            elif pair.excerpt_coverage < self.min_coverage:
                rejected.append(Rejected(pair.model_dump(), "low_coverage"))
            else:
                by_document.setdefault(pair.document_id, []).append(pair)
        kept: list[Pair] = []
        carry = drawn = 0
        for document_id, tokens in document_tokens.items():
            pairs = by_document.get(document_id, [])
            start = len(kept)
            allowance = tokens + self.draw(carry, tokens)
            pairs.sort(key=lambda p: (-(p.judge_score or 0), -p.excerpt_coverage, -p.match_score))
            spent = 0
            for pair in pairs:
                duplicate = self.deduplicator.duplicate_of(pair) if self.deduplicator else None
                n_kept = len(kept) - start
                if duplicate is not None:
                    rejected.append(Rejected(pair.model_dump() | {"duplicate_of": duplicate[1]}, duplicate[0]))
                elif self.max_pairs_per_document is not None and n_kept >= self.max_pairs_per_document:
                    rejected.append(Rejected(pair.model_dump(), "max_pairs_per_document"))
                elif self.token_budget and spent + pair.synthetic_token_count > allowance:
                    rejected.append(Rejected(pair.model_dump(), "token_budget"))
                else:
                    spent += pair.synthetic_token_count
                    kept.append(pair)
                    if self.deduplicator:
                        self.deduplicator.add(pair)
            if self.token_budget and self.budget_carry_over:
                drawn += max(0, spent - tokens)
                carry = max(0, carry + tokens - spent)
        counters = {"budget_carry_tokens_drawn": float(drawn)} if self.token_budget and self.budget_carry_over else {}
        return StageResult(kept, rejected, counters)
