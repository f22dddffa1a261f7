"""Stage 7: keep pairs that pass the judge and the coverage gate, within each document's token budget.

In the pipeline, pair dedup across the whole dataset is its own step after the filter, on compact
signatures, across ranks (ranks/signatures.py); a filter given a `PairDeduplicator` also drops pairs that
repeat one it kept before (a single process's in-order dedup, e.g. for a stand-alone stage call)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fineinstructions.records import Pair
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.pair_dedup import PairDeduplicator

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext


class FilterStage(Stage[Pair, Pair]):
    """Per document, best-judged pairs first, keep pairs while their generated tokens fit the document's.

    A batch must hold every pair of the documents in it (executors shard by document).
    """

    name = "filter"
    input_type = Pair
    output_type = Pair
    whole_shard = True  # a document's pairs must meet in one batch

    def __init__(self, min_score: int = 4, min_coverage: float = 0.8, token_budget: bool = True,
                 max_pairs_per_document: int | None = None, deduplicator: PairDeduplicator | None = None):
        self.min_score = min_score
        self.min_coverage = min_coverage
        self.token_budget = token_budget
        self.max_pairs_per_document = max_pairs_per_document
        self.deduplicator = deduplicator  # pairs kept before, when this filter deduplicates in order

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> FilterStage:
        return cls(config.judge.min_score, config.instantiate.min_coverage, config.filter.token_budget,
                   config.filter.max_pairs_per_document)

    def process(self, batch: Sequence[Pair]) -> StageResult[Pair]:
        rejected: list[Rejected] = []
        by_document: dict[str, list[Pair]] = defaultdict(list)
        for pair in batch:
            if pair.judge_score is None:
                rejected.append(Rejected(pair.model_dump(), "unjudged"))
            elif pair.judge_score < self.min_score:
                rejected.append(Rejected(pair.model_dump(), "judge_score_below_threshold"))
            elif pair.excerpt_coverage < self.min_coverage:
                rejected.append(Rejected(pair.model_dump(), "low_coverage"))
            else:
                by_document[pair.document_id].append(pair)
        kept: list[Pair] = []
        for pairs in by_document.values():
            start = len(kept)
            pairs.sort(key=lambda p: (-(p.judge_score or 0), -p.excerpt_coverage, -p.match_score))
            spent = 0
            for pair in pairs:
                duplicate = self.deduplicator.duplicate_of(pair) if self.deduplicator else None
                n_kept = len(kept) - start
                if duplicate is not None:
                    rejected.append(Rejected(pair.model_dump() | {"duplicate_of": duplicate[1]}, duplicate[0]))
                elif self.max_pairs_per_document is not None and n_kept >= self.max_pairs_per_document:
                    rejected.append(Rejected(pair.model_dump(), "max_pairs_per_document"))
                elif self.token_budget and spent + pair.synthetic_token_count > pair.token_count:
                    rejected.append(Rejected(pair.model_dump(), "token_budget"))
                else:
                    spent += pair.synthetic_token_count
                    kept.append(pair)
                    if self.deduplicator:
                        self.deduplicator.add(pair)
        return StageResult(kept, rejected)
