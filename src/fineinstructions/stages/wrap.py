"""WRAP baseline (Maini et al. 2024, "Rephrasing the Web"): each document chunk of about 300 tokens rephrased in
one style (easy, medium, hard, qa), one rephrasing per chunk, used as training text on its own.

A document's chunks take the configured styles in turn from a seeded starting place, so a run mixes the
styles evenly. Rejections: `truncated_output` (cut at max_tokens), `too_short` (fewer words than
`min_length_ratio` x the chunk's), `not_rephrased` (the chunk copied back), `no_questions` (qa style without
Question:/Answer: turns); a lead-in line such as "Here is the rewritten passage:" is removed and counted.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fineinstructions.backends.base import Backend, Conversation, Generation
from fineinstructions.prompts import Prompt, load_prompt
from fineinstructions.stages.recipes import Built, Chunk, RecipeStage, seeded
from fineinstructions.text.normalize import dedup_key

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

_LEAD_IN = re.compile(r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is| are)\b[^\n]{0,80}:|(?:rewritten|rephrased|paraphrased)"
                      r"[^\n]{0,40}:)\s*\n", re.I)
_QUESTION = re.compile(r"^\s*(?:[-*]\s*)?question\s*\d*\s*:", re.I | re.M)
_ANSWER = re.compile(r"^\s*(?:[-*]\s*)?answer\s*\d*\s*:", re.I | re.M)


class WrapStage(RecipeStage):
    name = "wrap"
    recipe = "wrap"

    def __init__(self, backend: Backend, styles: tuple[str, ...] = ("medium", "qa"), prompt_version: str = "v1",
                 chunk_tokens: int = 300, max_tokens: int = 512, temperature: float = 0.0, seed: int = 0,
                 min_length_ratio: float = 0.3, config_fingerprint: str = "", max_chunks: int | None = None):
        super().__init__(backend, chunk_tokens, max_tokens, temperature, seed, config_fingerprint, max_chunks)
        self.styles = tuple(styles)
        self.prompts: dict[str, Prompt] = {s: load_prompt(f"wrap_{s}", prompt_version) for s in self.styles}
        self.min_length_ratio = min_length_ratio

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> WrapStage:
        wc = config.wrap
        return cls(context.backend("wrap", wc.prompt_version), tuple(wc.styles), wc.prompt_version, wc.chunk_tokens,
                   wc.max_tokens, wc.temperature, config.run.seed, wc.min_length_ratio, context.fingerprint,
                   wc.max_chunks_per_document)

    def style(self, chunk: Chunk) -> str:
        """The chunk's style: the styles in turn along the document, from a place drawn from its id."""
        start = seeded(self.seed, chunk.document.document_id).randrange(len(self.styles))
        return self.styles[(start + chunk.index) % len(self.styles)]

    def conversation(self, chunk: Chunk) -> tuple[Conversation, str]:
        prompt = self.prompts[self.style(chunk)]
        return prompt.conversation(text=chunk.text), prompt.version

    def build(self, chunk: Chunk, generation: Generation, counters: dict[str, float]) -> Built | str:
        if generation.finish_reason == "length":
            return "truncated_output"
        text, lead_ins = _LEAD_IN.subn("", generation.text.strip(), count=1)
        text = text.strip()
        counters["lead_in_removed"] = counters.get("lead_in_removed", 0) + lead_ins
        style = self.style(chunk)
        if len(text.split()) < self.min_length_ratio * len(chunk.text.split()):
            return "too_short"
        if dedup_key(text) == dedup_key(chunk.text):
            return "not_rephrased"
        if style == "qa" and not (_QUESTION.search(text) and _ANSWER.search(text)):
            return "no_questions"
        return Built(text, items=len(_QUESTION.findall(text)) if style == "qa" else 1, style=style)
