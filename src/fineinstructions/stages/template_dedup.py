"""Template deduplication: exact (the same text once case, spacing and punctuation are normalised, in
the variable descriptions too) and near (MinHash LSH over the normalised text, descriptions included).

Variable descriptions take part in both comparisons: "What is the <fi>boiling point</fi> of
<fi>substance</fi>?" and "What is the <fi>ethos</fi> of <fi>company</fi>?" share a skeleton but ask
for different things, and documents that fit one rarely fit the other.

The kept template of each group absorbs the others: its `popularity` counts the queries behind it, a
weight the matcher can use. Runs over the whole template bank at once (one shard).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fineinstructions.records import Template
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.templatize import template_key
from fineinstructions.text.dedup import NearDuplicateIndex

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext


class TemplateDedupStage(Stage[Template, Template]):
    name = "template_dedup"
    input_type = Template
    output_type = Template
    whole_shard = True  # compares every template with every other

    def __init__(self, near_duplicate_threshold: float | None = 0.85):
        self.near_duplicate_threshold = near_duplicate_threshold

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> TemplateDedupStage:
        return cls(config.templatize.near_duplicate_threshold)

    def process(self, batch: Sequence[Template]) -> StageResult[Template]:
        kept: dict[str, Template] = {}
        by_key: dict[str, str] = {}
        near = NearDuplicateIndex(self.near_duplicate_threshold) if self.near_duplicate_threshold else None
        rejected: list[Rejected] = []
        for template in batch:
            key = template_key(template.template)
            original = by_key.get(key)
            reason = "duplicate_template"
            if original is None and near is not None:
                original = near.check_and_add(template.template_id, key)
                reason = "near_duplicate_template"
            if original is None:
                by_key[key] = template.template_id
                kept[template.template_id] = template.model_copy()
                continue
            kept[original].popularity += template.popularity
            rejected.append(Rejected(template.model_dump() | {"duplicate_of": original}, reason))
        return StageResult(list(kept.values()), rejected)
