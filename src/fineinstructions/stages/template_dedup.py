"""Template deduplication: exact (same skeleton once variables are set aside) and near (MinHash LSH).

The kept template of each group absorbs the others: its `popularity` counts the queries behind it, a
weight the matcher can use. Runs over the whole template bank at once (one shard).
"""

from __future__ import annotations

from collections.abc import Sequence

from fineinstructions.records import Template
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.templatize import template_skeleton
from fineinstructions.text.dedup import NearDuplicateIndex


class TemplateDedupStage(Stage):
    name = "template_dedup"
    input_type = Template
    output_type = Template

    def __init__(self, near_duplicate_threshold: float | None = 0.85):
        self.near_duplicate_threshold = near_duplicate_threshold

    def process(self, batch: Sequence[Template]) -> StageResult:  # type: ignore[override]
        kept: dict[str, Template] = {}
        by_skeleton: dict[str, str] = {}
        near = NearDuplicateIndex(self.near_duplicate_threshold) if self.near_duplicate_threshold else None
        rejected: list[Rejected] = []
        for template in batch:
            skeleton = template_skeleton(template.template)
            original = by_skeleton.get(skeleton)
            reason = "duplicate_template"
            if original is None and near is not None:
                original = near.check_and_add(template.template_id, skeleton)
                reason = "near_duplicate_template"
            if original is None:
                by_skeleton[skeleton] = template.template_id
                kept[template.template_id] = template.model_copy()
                continue
            kept[original].popularity += template.popularity
            rejected.append(Rejected(template.model_dump() | {"duplicate_of": original}, reason))
        return StageResult(list(kept.values()), rejected)  # type: ignore[arg-type]
