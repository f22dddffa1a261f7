"""Instruction Pre-Training baseline (Cheng et al. 2024): instruction/response pairs synthesized about each raw
text, written after it as a reading-comprehension exercise.

The paper's synthesizer writes `<QUE> task <ANS> response </END>` items; an instruction model is prompted for
the same format here (prompts/ipt.v1.yaml). Parsing keeps what the paper's parser keeps: the reply split at
`</END>`, the last piece dropped when the reply did not end with one (cut off), each piece needing one
`<QUE>` at its start, one `<ANS>` and a non-empty response, repeated tasks (case-blind) dropped; a chunk
without a valid pair is rejected (`no_pairs`). The training text: the raw text (bare, or under a short
heading), an optional lead-in, then the pairs under one pair of labels (Q:/A:, Question:/Answer:,
Task:/Response:), each choice drawn per chunk from the seed, as the paper varies its layouts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from fineinstructions.backends.base import Backend, Conversation, Generation
from fineinstructions.errors import ConfigError
from fineinstructions.prompts import load_prompt
from fineinstructions.stages.recipes import Built, Chunk, RecipeStage, seeded

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

END, QUESTION, ANSWER = "</END>", "<QUE>", "<ANS>"
HEADINGS = ("{text}", "Article: {text}", "Read the passage below.\n\n{text}")
LEAD_INS = ("", "Now answer these questions:", "Answer the following based on the text above.")
LABELS = (("Q:", "A:"), ("Question:", "Answer:"), ("Task:", "Response:"))
_SPACE = re.compile(r"\s+")


def parse_tagged_pairs(text: str) -> tuple[list[tuple[str, str]], int]:
    """(task, response) pairs from `<QUE> .. <ANS> .. </END>` items, and how many pieces were dropped."""
    pieces = text.split(END)
    if not text.rstrip().endswith(END):
        pieces = pieces[:-1]  # the last piece was cut off (or is trailing text)
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    dropped = 0
    for piece in pieces:
        piece = piece.strip()
        if not piece.startswith(QUESTION) or piece.count(ANSWER) != 1 or piece.count(QUESTION) != 1:
            dropped += bool(piece)
            continue
        task, response = (_SPACE.sub(" ", part).strip() for part in piece[len(QUESTION):].split(ANSWER))
        if not task or not response or task.casefold() in seen:
            dropped += 1
            continue
        seen.add(task.casefold())
        pairs.append((task, response))
    return pairs, dropped


def ipt_layout(text: str, pairs: list[tuple[str, str]], choice: tuple[int, int, int]) -> str:
    """The training text: heading + text, lead-in, then the labelled pairs (`choice` indexes the three options)."""
    heading, lead_in, (q_label, a_label) = HEADINGS[choice[0]], LEAD_INS[choice[1]], LABELS[choice[2]]
    body = "\n\n".join(f"{q_label} {task}\n{a_label} {response}" for task, response in pairs)
    return "\n\n".join(part for part in (heading.format(text=text), lead_in, body) if part)


class IPTStage(RecipeStage):
    name = "ipt"
    recipe = "ipt"

    def __init__(self, backend: Backend, prompt_version: str = "v1", chunk_tokens: int = 1000,
                 max_tokens: int = 400, temperature: float = 0.0, seed: int = 0, config_fingerprint: str = "",
                 prompt_file: str | None = None, constrained: bool = False):
        super().__init__(backend, chunk_tokens, max_tokens, temperature, seed, config_fingerprint)
        self.prompt = load_prompt("ipt", prompt_version, prompt_file)
        if constrained:
            if not self.prompt.grammar:
                raise ConfigError(f"prompt {self.prompt.version} has no grammar for constrained decoding")
            self.sampling = dataclasses.replace(self.sampling, grammar=self.prompt.grammar)

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> IPTStage:
        ic = config.ipt
        return cls(context.backend("ipt", ic.prompt_version), ic.prompt_version, ic.chunk_tokens, ic.max_tokens,
                   ic.temperature, config.run.seed, context.fingerprint, ic.prompt_file, ic.constrained)

    def conversation(self, chunk: Chunk) -> tuple[Conversation, str]:
        return self.prompt.conversation(text=chunk.text), self.prompt.version

    def build(self, chunk: Chunk, generation: Generation, counters: dict[str, float]) -> Built | str:
        pairs, dropped = parse_tagged_pairs(generation.text)
        counters["pairs_dropped"] = counters.get("pairs_dropped", 0) + dropped
        if not pairs:
            return "no_pairs"
        rng = seeded(self.seed, chunk.document.document_id, chunk.index)
        choice = (rng.randrange(len(HEADINGS)), rng.randrange(len(LEAD_INS)), rng.randrange(len(LABELS)))
        return Built(ipt_layout(chunk.text, pairs, choice), items=len(pairs))
