"""Stage 2: a real user query -> an instruction template with `<fi>` variables and a document description.

Invalid outputs are retried (a bounded number of times, at a higher temperature and another seed)
before the query is dropped with the reason of its last attempt. With `structured`, engines that have
structured outputs decode under the prompt's JSON schema; every reply still goes through the same parser
and gates, which are all a backend without structured outputs relies on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fineinstructions.backends.base import Backend, Conversation, Generation, SamplingParams
from fineinstructions.contracts.templates import (
    FI_SPAN,
    ParsedTemplate,
    parse_templatizer_output,
    query_template_error,
)
from fineinstructions.errors import ConfigError
from fineinstructions.hashing import short_hash
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Query, Template
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.text.normalize import dedup_key, looks_binary

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

MAX_QUERY_CHARS = 4000


def template_key(template: str) -> str:
    """The template normalised for comparison: case, spacing and punctuation ignored, variables marked."""
    return dedup_key(FI_SPAN.sub(lambda m: f" fivar {m.group(1)} endfivar ", template))


def template_id(template: str) -> str:
    """Stable id of a template's text (templates with the same `template_key` share one id)."""
    return "tpl-" + short_hash(template_key(template))


class TemplatizeStage(Stage[Query, Template]):
    name = "templatize"
    input_type = Query
    output_type = Template
    holds_model = True
    backend: Backend

    def __init__(self, backend: Backend, prompt_version: str | None = None, max_tokens: int = 200,
                 temperature: float = 0.0, seed: int = 0, retries: int = 2, retry_temperature: float = 0.7,
                 min_intent_overlap: float = 0.5, prompt_file: str | None = None, structured: bool = False):
        self.backend = backend
        self.prompt = load_prompt("templatize", prompt_version, prompt_file)
        if structured and not self.prompt.json_schema:
            raise ConfigError(f"prompt {self.prompt.version} has no json_schema for structured decoding "
                              f"(templatize.structured needs one)")
        self.json_schema = self.prompt.json_schema if structured else None
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.retries = retries
        self.retry_temperature = retry_temperature
        self.min_intent_overlap = min_intent_overlap
        self._retried = 0
        self._recovered = 0

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> TemplatizeStage:
        tc = config.templatize
        return cls(context.backend("templatize", tc.prompt_version), tc.prompt_version, tc.max_tokens, tc.temperature,
                   config.run.seed, tc.retries, tc.retry_temperature, tc.min_intent_overlap, tc.prompt_file,
                   structured=tc.structured)

    def process(self, batch: Sequence[Query]) -> StageResult[Template]:
        rejected: list[Rejected] = []
        todo: list[Query] = []
        for query in batch:
            reason = self.input_error(query)
            if reason:
                rejected.append(Rejected(query.model_dump(), reason))
            else:
                todo.append(query)
        templates: dict[str, Template] = {}
        last_failure: dict[str, tuple[str, str]] = {}
        pending = todo
        self._retried = self._recovered = 0
        for attempt in range(self.retries + 1):
            if not pending:
                break
            sampling = SamplingParams(
                temperature=self.temperature if attempt == 0 else self.retry_temperature,
                max_tokens=self.max_tokens, seed=self.seed + attempt, json_schema=self.json_schema)
            generations = self.backend.generate([self.conversation(q) for q in pending], sampling)
            still: list[Query] = []
            for query, generation in zip(pending, generations, strict=True):
                outcome = self.check(query, generation)
                if isinstance(outcome, str):
                    last_failure[query.query_id] = (outcome, generation.text)
                    if not outcome.startswith("backend_error"):
                        still.append(query)
                    continue
                templates[query.query_id] = self._template(query, outcome, generation)
                if attempt > 0:
                    self._recovered += 1
            if attempt < self.retries:
                self._retried += len(still)
            pending = still
        for query in todo:
            if query.query_id not in templates:
                reason, output = last_failure[query.query_id]
                rejected.append(Rejected(query.model_dump() | {"output": output}, reason))
        return StageResult([templates[q.query_id] for q in todo if q.query_id in templates], rejected)

    @staticmethod
    def input_error(query: Query) -> str | None:
        """Why a query is dropped before any model call (None when it is sent)."""
        text = query.text.strip()
        if not text:
            return "empty_query"
        if len(text) > MAX_QUERY_CHARS:
            return "query_too_long"
        if looks_binary(text):
            return "binary_query"
        return None

    def conversation(self, query: Query) -> Conversation:
        """The chat request this stage sends for one query."""
        return self.prompt.conversation(query=query.text.strip())

    def check(self, query: Query, generation: Generation) -> ParsedTemplate | str:
        """Parse and gate one generation: the template, or the named reason it is rejected."""
        if not generation.ok:
            return f"backend_error: {generation.error}"
        parsed = parse_templatizer_output(generation.text)
        if isinstance(parsed, str):
            return parsed
        return query_template_error(query.text, parsed.template, self.min_intent_overlap) or parsed

    def _template(self, query: Query, parsed: ParsedTemplate, generation: Generation) -> Template:
        return Template(
            template_id=template_id(parsed.template),
            template=parsed.template,
            compatible_document_description=parsed.compatible_document_description,
            variables=parsed.variables,
            query_id=query.query_id,
            query=query.text,
            source=query.source,
            model_id=self.backend.model_id,
            prompt_version=self.prompt.version,
            completion_tokens=generation.completion_tokens,
        )

    def metrics(self, result: StageResult[Template]) -> dict[str, float]:
        return {"retried": self._retried, "recovered_by_retry": self._recovered}
