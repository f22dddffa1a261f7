"""Nemotron-CC baseline (Su et al. 2024), "diverse QA pairs": questions of several kinds about each document
segment, answered from it; k of the document's pairs are appended to the document as its training text.

Parsing follows what NeMo Curator does with such replies: one pair per line (a leading "- " removed), a line
that starts with "Question:" opens a pair and other lines continue it; a lead-in line before the first
question ("Here are the questions ...:") is dropped, any other text there rejects the segment
(`text_before_questions`). A pair without "Answer:" is dropped (counted); a reply cut at max_tokens loses its
last pair (counted), and a pair repeated word for word is kept once (counted). k is drawn per document from
1..max(1, max_pairs x document tokens / 150), seeded, and the kept pairs are shuffled. Rejections: `no_pairs`,
`text_before_questions`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fineinstructions.backends.base import Backend, Conversation, Generation
from fineinstructions.prompts import load_prompt
from fineinstructions.stages.recipes import Built, Chunk, RecipeStage, seeded

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

_QUESTION = re.compile(r"^question\s*\d*\s*:", re.I)
_ANSWER = re.compile(r"\banswer\s*\d*\s*:", re.I)
_LEAD_IN = re.compile(r"^(?:sure[,!.]?\s*)?here\b.{0,120}:$", re.I)
PAIR_SEPARATOR = "\n\n"


def parse_qa_pairs(text: str, truncated: bool = False) -> tuple[list[str], dict[str, int]] | str:
    """The reply's "Question: ... Answer: ..." pairs (each as one string), with counts of what was dropped, or the
    named reason the reply has none."""
    pairs: list[list[str]] = []
    dropped = {"pairs_without_answer": 0, "pairs_cut": 0, "repeated_pairs": 0}
    for raw in text.strip().splitlines():
        line = raw.strip().removeprefix("- ").removeprefix("* ").strip()
        if not line:
            continue
        if _QUESTION.match(line):
            pairs.append([line])
        elif pairs:
            pairs[-1].append(line)
        elif not _LEAD_IN.match(line):
            return "text_before_questions"
    if truncated and pairs:
        pairs.pop()
        dropped["pairs_cut"] = 1
    whole = [" ".join(p) for p in pairs]
    answered = [p for p in whole if _ANSWER.search(p) and _ANSWER.split(p, maxsplit=1)[1].strip()]
    dropped["pairs_without_answer"] = len(whole) - len(answered)
    kept = list({p.casefold(): p for p in reversed(answered)}.values())[::-1]  # the first of each repeated pair
    dropped["repeated_pairs"] = len(answered) - len(kept)
    return (kept, dropped) if kept else "no_pairs"


class NemotronQAStage(RecipeStage):
    name = "nemotron_qa"
    recipe = "nemotron_qa"

    def __init__(self, backend: Backend, prompt_version: str = "v1", segment_tokens: int = 1000,
                 max_tokens: int = 600, temperature: float = 0.0, seed: int = 0, max_pairs: int = 10,
                 config_fingerprint: str = "", prompt_file: str | None = None):
        super().__init__(backend, segment_tokens, max_tokens, temperature, seed, config_fingerprint)
        self.prompt = load_prompt("nemotron_qa", prompt_version, prompt_file)
        self.max_pairs = max_pairs

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> NemotronQAStage:
        qc = config.nemotron_qa
        return cls(context.backend("nemotron_qa", qc.prompt_version), qc.prompt_version, qc.segment_tokens,
                   qc.max_tokens, qc.temperature, config.run.seed, qc.max_pairs, context.fingerprint, qc.prompt_file)

    def conversation(self, chunk: Chunk) -> tuple[Conversation, str]:
        return self.prompt.conversation(document=chunk.text), self.prompt.version

    def build(self, chunk: Chunk, generation: Generation, counters: dict[str, float]) -> Built | str:
        parsed = parse_qa_pairs(generation.text, truncated=generation.finish_reason == "length")
        if isinstance(parsed, str):
            return parsed
        pairs, dropped = parsed
        for key, value in dropped.items():
            counters[key] = counters.get(key, 0) + value
        return Built(PAIR_SEPARATOR.join(pairs), items=len(pairs))

    def combine(self, texts: list[tuple[Chunk, Built, Generation, str]],
                document_tokens: dict[str, int]) -> list[tuple[Chunk, Built, Generation, str]]:
        """One text per document: the whole document, then k of the pairs of all its segments."""
        by_document: dict[str, list[tuple[Chunk, Built, Generation, str]]] = {}
        for item in texts:
            by_document.setdefault(item[0].document.document_id, []).append(item)
        out = []
        for document_id, items in by_document.items():
            document = items[0][0].document
            pairs = [p for _, built, _, _ in items for p in built.text.split(PAIR_SEPARATOR)]
            tokens = document_tokens[document_id]
            rng = seeded(self.seed, document_id)
            k = min(len(pairs), rng.randint(1, max(1, int(self.max_pairs * tokens / 150))))
            chosen = rng.sample(pairs, k)
            whole = Chunk(document, 0, document.text.strip(), tokens)
            completion = Generation("", completion_tokens=sum(g.completion_tokens for _, _, g, _ in items))
            out.append((whole, Built(document.text.strip() + PAIR_SEPARATOR + PAIR_SEPARATOR.join(chosen),
                                     items=k), completion, items[0][3]))
        return out
