"""Query filters before the model: normalisation, bounds, binary/language/moderation checks,
benchmark decontamination, and exact plus near-duplicate removal.

Runs over the whole query set at once (one shard), because deduplication compares every query with
all earlier ones. Every dropped query keeps its row and a named reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fineinstructions.records import Query
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.text.decontaminate import Decontaminator
from fineinstructions.text.dedup import NearDuplicateIndex
from fineinstructions.text.language import LanguageFilter
from fineinstructions.text.moderation import ModerationFilter
from fineinstructions.text.normalize import dedup_key, looks_binary, normalize_text

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext


class QueryFilterStage(Stage[Query, Query]):
    name = "query_filter"
    input_type = Query
    output_type = Query
    whole_shard = True  # deduplicates across the whole query set

    def __init__(self, min_chars: int = 10, max_chars: int = 2000, languages: Sequence[str] = ("en",),
                 moderation: bool = True, moderation_terms: str | None = None,
                 moderation_patterns: Sequence[str] = (), decontaminate: Decontaminator | None = None,
                 near_duplicate_threshold: float | None = 0.8):
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.language = LanguageFilter(list(languages)) if languages else None
        self.moderation = ModerationFilter(moderation_terms, list(moderation_patterns)) if moderation else None
        self.decontaminator = decontaminate
        self.near = NearDuplicateIndex(near_duplicate_threshold) if near_duplicate_threshold else None
        self.seen: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> QueryFilterStage:
        qf = config.query_filter
        decontaminator = None
        if qf.decontaminate:
            decontaminator = Decontaminator(load_eval_texts(qf.decontaminate, qf.decontaminate_field),
                                            qf.decontaminate_ngram)
        return cls(qf.min_chars, qf.max_chars, qf.languages, qf.moderation, qf.moderation_terms,
                   qf.moderation_patterns, decontaminator, qf.near_duplicate_threshold)

    def process(self, batch: Sequence[Query]) -> StageResult[Query]:
        kept: list[Query] = []
        rejected: list[Rejected] = []
        for query in batch:
            text = normalize_text(query.text) if not looks_binary(query.text) else ""
            reason = self._reason(query.text, text)
            if reason is None:
                key = dedup_key(text)
                if key in self.seen:
                    reason = f"duplicate_query: {self.seen[key]}"
                elif self.near is not None and (twin := self.near.check_and_add(query.query_id, text)):
                    reason = f"near_duplicate_query: {twin}"
                else:
                    self.seen[key] = query.query_id
            if reason is None:
                kept.append(query.model_copy(update={"text": text}))
            else:
                rejected.append(Rejected(query.model_dump(), reason))
        return StageResult(kept, rejected)

    def _reason(self, raw: str, text: str) -> str | None:
        if looks_binary(raw):
            return "binary_query"
        if not text:
            return "empty_query"
        if len(text) < self.min_chars:
            return "query_too_short"
        if len(text) > self.max_chars:
            return "query_too_long"
        if self.moderation is not None and (flag := self.moderation.rejects(text)):
            return flag
        if self.decontaminator is not None and self.decontaminator.contaminated(text):
            return "benchmark_contamination"
        if self.language is not None and (flag := self.language.rejects(text)):
            return flag
        return None


def load_eval_texts(paths: Sequence[str], text_field: str = "text") -> list[str]:
    """Evaluation prompts to decontaminate against: .txt (one per line), .jsonl/.json/.parquet or hf:NAME."""
    from fineinstructions.io.readers import read_rows

    texts: list[str] = []
    for path in paths:
        if path.endswith(".txt") and Path(path).is_file():
            texts += [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
            continue
        for row in read_rows(path):
            value = row.get(text_field)
            if isinstance(value, str):
                texts.append(value)
    return texts
