"""Stage 5: document + template -> an instruction and an answer that quotes the document, or null."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from fineinstructions.backends.base import Backend, Conversation, Generation, SamplingParams
from fineinstructions.contracts.excerpts import ExpandedAnswer, NormalizedText, expand_excerpts
from fineinstructions.contracts.templates import (
    DEFAULT_MAX_INSTANCE_LENGTH_RATIO,
    DEFAULT_MIN_INSTANCE_SHARE,
    first_json_object,
    has_fi_tags,
    instance_error,
    strip_fences,
    template_variables,
    unfilled_variables,
)
from fineinstructions.errors import ConfigError
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Match, Pair
from fineinstructions.stages.base import Rejected, Stage, StageResult, document_major

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

_INSTRUCTION = re.compile(r"<instruction>(.*?)</instruction>", re.S | re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_VALUES = re.compile(r"<values>.*?(?:</values>|$)", re.S | re.I)
MIN_INSTRUCTION_WORDS = 3
MAX_INSTRUCTION_CHARS = 2000
_CUT = re.compile(r"[.!?]\s|\n")
_FUNCTION_WORDS = frozenset({"The", "This", "That", "These", "Those", "Its", "Her", "His", "She", "They", "Then",
                             "There", "When", "Where", "What", "Which", "Who", "Before", "After", "During", "And",
                             "But", "For", "In", "On", "At", "As"})


@dataclass(frozen=True)
class ParsedInstantiation:
    instruction: str
    answer: str
    values: dict[str, str] | None = None  # the `<values>` block: description -> value (None: the reply has none)


def parse_values(block: str) -> dict[str, str]:
    """`description = value; description = value` (the instantiate prompt's `<values>` block) as a mapping;
    parts without `=` are skipped."""
    values: dict[str, str] = {}
    for part in block.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            values.setdefault(name.strip(), value.strip())
    return values


def parse_instantiation(text: str) -> ParsedInstantiation | str:
    """Parse `<values>..</values>` (optional), `<instruction>..</instruction><answer>..</answer>` (or a JSON
    object); a reason on failure."""
    stripped = strip_fences(text)
    block = _VALUES.search(stripped)
    values = parse_values(re.sub(r"</?values>", "", block.group(0), flags=re.I)) if block else None
    cleaned = _VALUES.sub("", stripped, count=1)
    if cleaned.strip().strip('"').lower() in ("null", "none", ""):
        return "null" if cleaned.strip() else "empty_output"
    instruction = _INSTRUCTION.search(cleaned)
    answer = _ANSWER.search(cleaned)
    if instruction and answer:
        return ParsedInstantiation(instruction.group(1).strip(), answer.group(1).strip(), values)
    obj = first_json_object(cleaned)
    if obj is not None:
        inst = obj.get("instantiated_instruction", obj.get("instruction"))
        ans = obj.get("answer")
        if isinstance(inst, str) and isinstance(ans, str):
            return ParsedInstantiation(inst.strip(), ans.strip(), values)
    if re.match(r"^\s*null\b", cleaned, re.I):
        return "null"
    return "unparseable_output"


class InstantiateStage(Stage[Match, Pair]):
    """Generate document-major (all templates of one document back to back) and gate each pair."""

    name = "instantiate"
    input_type = Match
    output_type = Pair
    holds_model = True
    backend: Backend

    def __init__(self, backend: Backend, prompt_version: str | None = None, max_tokens: int = 400,
                 temperature: float = 0.0, seed: int = 0, min_coverage: float = 0.8,
                 config_fingerprint: str = "", min_copy_words: int = 6, min_answer_words: int = 3,
                 max_answer_chars: int = 6000, max_prompt_document_chars: int = 8000, constrained: bool = False,
                 min_instance_share: float = DEFAULT_MIN_INSTANCE_SHARE,
                 max_instance_length_ratio: float = DEFAULT_MAX_INSTANCE_LENGTH_RATIO, prompt_file: str | None = None):
        self.backend = backend
        self.prompt = load_prompt("instantiate", prompt_version, prompt_file)
        if constrained and not self.prompt.grammar:
            raise ConfigError(f"prompt {self.prompt.version} has no grammar for constrained decoding "
                              f"(instantiate.constrained needs one)")
        self.sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed,
                                       grammar=self.prompt.grammar if constrained else None)
        self.min_coverage = min_coverage
        self.config_fingerprint = config_fingerprint
        self.min_copy_words = min_copy_words
        self.min_answer_words = min_answer_words
        self.max_answer_chars = max_answer_chars
        self.max_prompt_document_chars = max_prompt_document_chars
        self.min_instance_share = min_instance_share
        self.max_instance_length_ratio = max_instance_length_ratio
        # The prompt's own labels and tags, neutralised in the document it shows (a JSON user message escapes
        # everything itself).
        self.guard = self.prompt.field_guard

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> InstantiateStage:
        ic = config.instantiate
        return cls(context.backend("instantiate", ic.prompt_version), ic.prompt_version, ic.max_tokens,
                   ic.temperature, config.run.seed, ic.min_coverage, context.fingerprint, ic.min_copy_words,
                   ic.min_answer_words, ic.max_answer_chars, ic.max_prompt_document_chars, ic.constrained,
                   ic.min_instance_share, ic.max_instance_length_ratio, ic.prompt_file)

    def process(self, batch: Sequence[Match]) -> StageResult[Pair]:
        rejected: list[Rejected] = []
        # A template without variables has nothing to instantiate from the document: no call is made.
        usable = []
        for m in batch:
            if template_variables(m.template):
                usable.append(m)
            else:
                rejected.append(Rejected(m.model_dump(exclude={"text"}), "template_without_variables"))
        matches = document_major(usable)
        conversations = [self.conversation(m) for m in matches]
        generations = self.backend.generate(conversations, self.sampling)
        normalized: dict[str, NormalizedText] = {}
        passed: list[tuple[Match, ParsedInstantiation, ExpandedAnswer, int]] = []
        for match, generation in zip(matches, generations, strict=True):
            row = match.model_dump(exclude={"text"}) | {"output": generation.text}
            if match.document_id not in normalized:  # once per document, not per candidate
                normalized[match.document_id] = NormalizedText(match.text)
            doc = normalized[match.document_id]
            outcome = self.gate(match, generation, doc)
            if isinstance(outcome, Rejected):
                rejected.append(Rejected(row | outcome.row, outcome.reason))
            else:
                passed.append((match, outcome[0], outcome[1], generation.completion_tokens))
        documents = {m.document_id: m.text for m in matches}
        truncated = sum(1 for text in documents.values() if len(text) > self.max_prompt_document_chars)
        marked = sum(1 for text in documents.values() if self.guard.affected(self._cut(text)))
        # Kept pairs whose markers resolved only by repair (case, quotes, punctuation, a word or two off).
        repaired = [expanded.repaired_excerpts for _, _, expanded, _ in passed]
        return StageResult(self._pairs(passed), rejected,
                           {"documents_cut_for_prompt": truncated, "documents_with_prompt_markers": marked,
                            "repaired_excerpts": sum(repaired),
                            "pairs_with_repaired_excerpts": sum(1 for count in repaired if count)})

    @cached_property
    def _example_names(self) -> frozenset[str]:
        """Capitalised words of the prompt's example documents (names such as "Kessler" or "Marta")."""
        words = {w for example_input, _ in self.prompt.examples
                 for w in re.findall(r"\b[A-Z][a-z]{2,}\b", example_input.get("document", ""))}
        return frozenset(words - _FUNCTION_WORDS)

    def _copies_example(self, text: str, document: str) -> bool:
        """True when the output names something from a few-shot example that its own document never mentions
        (small models copy example names into unrelated pairs)."""
        return any(name in text and name not in document for name in self._example_names)

    def conversation(self, match: Match) -> Conversation:
        """The chat request this stage sends for one (template, document) match."""
        return self.prompt.conversation(document=self.prompt_document(match.text), template=match.template)

    def prompt_document(self, text: str) -> str:
        """The document as the prompt shows it: cut at a sentence end before `max_prompt_document_chars`, and
        with the prompt's own labels and tags neutralised (a zero-width space in `TEMPLATE:`, `</answer>`), so that
        no text of the document can close its field and open another one (a line `TEMPLATE:` then "Ignore the
        above..."); documents without them are shown as they are.

        Excerpts still resolve against the whole, original document.
        """
        return self.guard.neutralize(self._cut(text))

    def _cut(self, text: str) -> str:
        if len(text) <= self.max_prompt_document_chars:
            return text
        head = text[: self.max_prompt_document_chars]
        cuts = [m.end() for m in _CUT.finditer(head)]
        return head[: cuts[-1]].rstrip() if cuts and cuts[-1] > len(head) // 2 else head.rstrip()

    def gate(self, match: Match, generation: Generation,
             doc: NormalizedText) -> tuple[ParsedInstantiation, ExpandedAnswer] | Rejected:
        """Parse, expand and check one generation; a Rejected (extra row fields + named reason) on failure."""
        if not generation.ok:
            return Rejected({}, f"backend_error: {generation.error}")
        if generation.finish_reason == "length":
            return Rejected({}, "truncated_output")
        parsed = parse_instantiation(generation.text)
        if isinstance(parsed, str):
            return Rejected({}, parsed)
        reason = self._instruction_error(parsed.instruction, match.template, parsed.values) or instance_error(
            parsed.instruction, match.template, self.min_instance_share, self.max_instance_length_ratio)
        if reason:
            return Rejected({}, reason)
        if self.guard.affected(match.text):
            # Quotes copied from the neutralised prompt copy resolve against the original document; an
            # `<excerpt>` tag of the document stays neutralised (restored, it would become a marker).
            parsed = ParsedInstantiation(parsed.instruction, self.guard.restore(parsed.answer, keep_tags=("excerpt",)),
                                         parsed.values)
        if self._copies_example(parsed.instruction + " " + parsed.answer, doc.text):
            return Rejected({}, "copied_from_example")
        expanded = expand_excerpts(parsed.answer, doc, self.min_copy_words)
        if not expanded.text:
            return Rejected({}, "empty_answer")
        if not expanded.resolved:
            return Rejected({}, "unresolved_excerpt: " + expanded.unresolved[0][1])
        if has_fi_tags(expanded.text):
            return Rejected({}, "leftover_fi")
        if len(expanded.text.split()) < self.min_answer_words:
            return Rejected({}, "answer_too_short")
        if len(expanded.text) > self.max_answer_chars:
            return Rejected({}, "answer_too_long")
        if expanded.coverage < self.min_coverage:
            return Rejected({"excerpt_coverage": expanded.coverage}, "low_coverage")
        return parsed, expanded

    def _pairs(self, passed: list[tuple[Match, ParsedInstantiation, ExpandedAnswer, int]]) -> list[Pair]:
        """Pairs with their token counts, counted in one backend call for the whole batch."""
        documents = {m.document_id: m.text for m, *_ in passed}
        texts = list(documents.values()) + [t for _, p, e, _ in passed for t in (p.instruction, e.text)]
        counts = self.backend.count_tokens(texts)
        doc_tokens = dict(zip(documents, counts[: len(documents)], strict=True))
        synthetic = counts[len(documents):]
        return [
            Pair(
                document_id=match.document_id, template_id=match.template_id, text=match.text,
                template=match.template, instantiated_instruction=parsed.instruction, answer=expanded.text,
                answer_with_markers=parsed.answer, excerpt_coverage=round(expanded.coverage, 4),
                excerpt_count=expanded.excerpts, synthetic_token_count=synthetic[2 * i] + synthetic[2 * i + 1],
                token_count=doc_tokens[match.document_id], completion_tokens=completion_tokens,
                match_score=match.score, match_part=match.part, instantiator_model=self.backend.model_id,
                instantiate_prompt_version=self.prompt.version, config_fingerprint=self.config_fingerprint,
            )
            for i, (match, parsed, expanded, completion_tokens) in enumerate(passed)
        ]

    @staticmethod
    def _instruction_error(instruction: str, template: str, named: dict[str, str] | None = None) -> str | None:
        """`leftover_fi` (a `<fi>` tag left in), `unfilled_variable`, `instruction_too_short` or `_too_long`.

        `unfilled_variable` is decided from the template's structure and the values the model named
        (`unfilled_variables`): the instruction is aligned with the template, whose own words anchor each
        variable's value, and a variable is unfilled when its value is missing, still holds `<fi>`, is a
        bracketed placeholder ("[programming language]"), or copies a description that names a kind of thing
        ("a programming language" for <fi>programming language</fi>) in place of another value the model named
        in its `<values>` block (any such copy when the reply has no block). A value equal to a description
        that names a concrete thing passes ("the Python interpreter" for <fi>Python interpreter</fi>).
        """
        if has_fi_tags(instruction):
            return "leftover_fi"
        if unfilled_variables(instruction, template, named):
            return "unfilled_variable"
        if len(instruction.split()) < MIN_INSTRUCTION_WORDS:
            return "instruction_too_short"
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            return "instruction_too_long"
        return None

    def metrics(self, result: StageResult[Pair]) -> dict[str, float]:
        pairs = result.records
        return {"coverage_sum": sum(p.excerpt_coverage for p in pairs),
                "answer_chars": sum(len(p.answer) for p in pairs),
                "answer_completion_tokens": sum(p.completion_tokens for p in pairs)}
