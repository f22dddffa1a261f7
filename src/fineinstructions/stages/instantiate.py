"""Stage 5: document + template -> an instruction and an answer that quotes the document, or null."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fineinstructions.backends.base import Backend, SamplingParams
from fineinstructions.contracts.excerpts import NormalizedText, expand_excerpts
from fineinstructions.contracts.templates import (
    FI_SPAN,
    first_json_object,
    has_fi_tags,
    strip_fences,
    template_variables,
)
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Match, Pair
from fineinstructions.stages.base import Rejected, Stage, StageResult

_INSTRUCTION = re.compile(r"<instruction>(.*?)</instruction>", re.S | re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
MIN_INSTRUCTION_WORDS = 3
MAX_INSTRUCTION_CHARS = 2000


@dataclass(frozen=True)
class ParsedInstantiation:
    instruction: str
    answer: str


def parse_instantiation(text: str) -> ParsedInstantiation | str:
    """Parse `<instruction>..</instruction><answer>..</answer>` (or a JSON object); a reason on failure."""
    cleaned = strip_fences(text)
    if cleaned.strip().strip('"').lower() in ("null", "none", ""):
        return "null" if cleaned.strip() else "empty_output"
    instruction = _INSTRUCTION.search(cleaned)
    answer = _ANSWER.search(cleaned)
    if instruction and answer:
        return ParsedInstantiation(instruction.group(1).strip(), answer.group(1).strip())
    obj = first_json_object(cleaned)
    if obj is not None:
        inst = obj.get("instantiated_instruction", obj.get("instruction"))
        ans = obj.get("answer")
        if isinstance(inst, str) and isinstance(ans, str):
            return ParsedInstantiation(inst.strip(), ans.strip())
    if re.match(r"^\s*null\b", cleaned, re.I):
        return "null"
    return "unparseable_output"


class InstantiateStage(Stage):
    """Generate document-major (all templates of one document back to back) and gate each pair."""

    name = "instantiate"
    input_type = Match
    output_type = Pair

    def __init__(self, backend: Backend, prompt_version: str | None = None, max_tokens: int = 400,
                 temperature: float = 0.0, seed: int = 0, min_coverage: float = 0.8,
                 config_fingerprint: str = ""):
        self.backend = backend
        self.prompt = load_prompt("instantiate", prompt_version)
        self.sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
        self.min_coverage = min_coverage
        self.config_fingerprint = config_fingerprint

    def process(self, batch: Sequence[Match]) -> StageResult:  # type: ignore[override]
        # Stable sort keeps each document's candidates adjacent, so the engine reuses the document prefix.
        first_seen: dict[str, int] = {}
        for i, m in enumerate(batch):
            first_seen.setdefault(m.document_id, i)
        matches = sorted(batch, key=lambda m: (first_seen[m.document_id], m.rank))
        conversations = [self.prompt.conversation(document=m.text, template=m.template) for m in matches]
        generations = self.backend.generate(conversations, self.sampling)
        normalized: dict[str, NormalizedText] = {}
        passed: list[tuple[Match, ParsedInstantiation, str, float, int, int]] = []
        rejected: list[Rejected] = []
        for match, generation in zip(matches, generations, strict=True):
            row = match.model_dump(exclude={"text"}) | {"output": generation.text}
            if not generation.ok:
                rejected.append(Rejected(row, f"backend_error: {generation.error}"))
                continue
            if generation.finish_reason == "length":
                rejected.append(Rejected(row, "truncated_output"))
                continue
            parsed = parse_instantiation(generation.text)
            if isinstance(parsed, str):
                rejected.append(Rejected(row, parsed))
                continue
            reason = self._instruction_error(parsed.instruction, match.template)
            if reason:
                rejected.append(Rejected(row, reason))
                continue
            doc = normalized.setdefault(match.document_id, NormalizedText(match.text))
            expanded = expand_excerpts(parsed.answer, doc)
            if not expanded.text:
                rejected.append(Rejected(row, "empty_answer"))
                continue
            if not expanded.resolved:
                rejected.append(Rejected(row, "unresolved_excerpt: " + expanded.unresolved[0][1]))
                continue
            if has_fi_tags(expanded.text):
                rejected.append(Rejected(row, "leftover_fi"))
                continue
            if expanded.coverage < self.min_coverage:
                rejected.append(Rejected(row | {"excerpt_coverage": expanded.coverage}, "low_coverage"))
                continue
            passed.append((match, parsed, expanded.text, expanded.coverage, expanded.excerpts,
                           generation.completion_tokens))
        return StageResult(self._pairs(passed), rejected)  # type: ignore[arg-type]

    def _pairs(self, passed: list[tuple[Match, ParsedInstantiation, str, float, int, int]]) -> list[Pair]:
        """Pairs with their token counts, counted in one backend call for the whole batch."""
        documents = {m.document_id: m.text for m, *_ in passed}
        texts = list(documents.values()) + [t for _, p, answer, *_ in passed for t in (p.instruction, answer)]
        counts = self.backend.count_tokens(texts)
        doc_tokens = dict(zip(documents, counts[: len(documents)], strict=True))
        synthetic = counts[len(documents):]
        return [
            Pair(
                document_id=match.document_id, template_id=match.template_id, text=match.text,
                template=match.template, instantiated_instruction=parsed.instruction, answer=answer,
                answer_with_markers=parsed.answer, excerpt_coverage=round(coverage, 4), excerpt_count=excerpts,
                synthetic_token_count=synthetic[2 * i] + synthetic[2 * i + 1],
                token_count=doc_tokens[match.document_id], completion_tokens=completion_tokens,
                match_score=match.score, match_part=match.part, instantiator_model=self.backend.model_id,
                instantiate_prompt_version=self.prompt.version, config_fingerprint=self.config_fingerprint,
            )
            for i, (match, parsed, answer, coverage, excerpts, completion_tokens) in enumerate(passed)
        ]

    @staticmethod
    def _instruction_error(instruction: str, template: str) -> str | None:
        if has_fi_tags(instruction):
            return "leftover_fi"
        lowered = instruction.lower()
        fixed_text = FI_SPAN.sub(" ", template).lower()
        for variable in template_variables(template):
            v = variable.lower()
            # The description was copied instead of a value (more often than the template's own words use it).
            if len(v.split()) >= 2 and lowered.count(v) > fixed_text.count(v):
                return "unfilled_variable"
        if len(instruction.split()) < MIN_INSTRUCTION_WORDS:
            return "instruction_too_short"
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            return "instruction_too_long"
        return None

    def metrics(self, result: StageResult) -> dict[str, float]:
        pairs: list[Pair] = result.records  # type: ignore[assignment]
        return {"coverage_sum": sum(p.excerpt_coverage for p in pairs),
                "answer_chars": sum(len(p.answer) for p in pairs),
                "answer_completion_tokens": sum(p.completion_tokens for p in pairs)}
