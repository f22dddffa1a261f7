"""Stage 6: score each pair 1-5 against a versioned rubric, with feedback stored on the row."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fineinstructions.backends.base import Backend, SamplingParams
from fineinstructions.contracts.templates import first_json_object
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Pair
from fineinstructions.stages.base import Stage, StageResult, document_major

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

_SCORE_TAG = re.compile(r"<score>\s*([1-5])(?:\.0+)?\s*(?:/\s*5)?\s*</score>", re.I)
_SCORE_LOOSE = re.compile(r"score\W{0,5}([1-5])\b", re.I)
_FEEDBACK = re.compile(r"<feedback>(.*?)(?:</feedback>|<score>|$)", re.S | re.I)


def parse_judgement(text: str) -> tuple[int, str] | None:
    """(score, feedback) from `<feedback>..</feedback><score>N</score>`, a JSON object, or `Score: N`."""
    feedback_match = _FEEDBACK.search(text)
    feedback = feedback_match.group(1).strip() if feedback_match else ""
    score_match = _SCORE_TAG.search(text)
    if score_match:
        return int(score_match.group(1)), feedback
    obj = first_json_object(text)
    if obj is not None and str(obj.get("score", "")).strip() in {"1", "2", "3", "4", "5"}:
        return int(str(obj["score"]).strip()), str(obj.get("feedback", feedback))
    loose = _SCORE_LOOSE.findall(text)
    if loose:
        return int(loose[-1]), feedback or text.strip()[:500]
    return None


class JudgeStage(Stage[Pair, Pair]):
    """Pairs of one document are judged back to back (shared document prefix). Never drops a row:
    an unparseable judgement leaves `judge_score` empty and the filter drops it with its reason."""

    name = "judge"
    input_type = Pair
    output_type = Pair
    holds_model = True
    backend: Backend

    def __init__(self, backend: Backend, prompt_version: str | None = None, max_tokens: int = 160,
                 temperature: float = 0.0, seed: int = 0, prompt_file: str | None = None):
        self.backend = backend
        self.prompt = load_prompt("judge", prompt_version, prompt_file)
        self.sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
        # The prompt's own labels and tags, neutralised in the fields it shows, so that a document (or an
        # answer quoting it) cannot close its field and show the judge a pair of its own.
        self.guard = self.prompt.field_guard

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> JudgeStage:
        jc = config.judge
        return cls(context.backend("judge", jc.prompt_version), jc.prompt_version, jc.max_tokens, jc.temperature,
                   config.run.seed, jc.prompt_file)

    def process(self, batch: Sequence[Pair]) -> StageResult[Pair]:
        batch = document_major(batch)  # the engine reuses the prefix up to the end of each document
        fields = [{"document": p.text, "instruction": p.instantiated_instruction, "answer": p.answer} for p in batch]
        marked = sum(1 for f in fields if any(self.guard.affected(v) for v in f.values()))
        conversations = [self.prompt.conversation(**{k: self.guard.neutralize(v) for k, v in f.items()})
                         for f in fields]
        generations = self.backend.generate(conversations, self.sampling)
        judged: list[Pair] = []
        for pair, generation in zip(batch, generations, strict=True):
            update: dict[str, object] = {"judge_model": self.backend.model_id,
                                         "judge_prompt_version": self.prompt.version}
            parsed = parse_judgement(generation.text) if generation.ok else None
            if parsed is None:
                update |= {"judge_score": None,
                           "judge_feedback": f"unparseable judgement: {generation.error or generation.text[:300]}"}
            else:
                update |= {"judge_score": parsed[0], "judge_feedback": parsed[1]}
            judged.append(pair.model_copy(update=update))
        return StageResult(judged, counters={"pairs_with_prompt_markers": marked})

    def metrics(self, result: StageResult[Pair]) -> dict[str, float]:
        counts: dict[str, float] = {}
        for pair in result.records:
            key = f"score_{pair.judge_score if pair.judge_score is not None else 'none'}"
            counts[key] = counts.get(key, 0) + 1
        return counts
