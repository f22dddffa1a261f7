"""Stage 2: a real user query -> an instruction template with `<fi>` variables and a document description."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fineinstructions.backends.base import Backend, SamplingParams
from fineinstructions.contracts.templates import parse_templatizer_output
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Query, Template
from fineinstructions.stages.base import Rejected, Stage, StageResult

MAX_QUERY_CHARS = 4000


def template_id(template: str) -> str:
    """Stable id of a template's text (identical templates share one id)."""
    return "tpl-" + hashlib.sha256(" ".join(template.split()).lower().encode()).hexdigest()[:16]


class TemplatizeStage(Stage):
    name = "templatize"
    input_type = Query
    output_type = Template

    def __init__(self, backend: Backend, prompt_version: str | None = None, max_tokens: int = 200,
                 temperature: float = 0.0, seed: int = 0):
        self.backend = backend
        self.prompt = load_prompt("templatize", prompt_version)
        self.sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)

    def process(self, batch: Sequence[Query]) -> StageResult:  # type: ignore[override]
        rejected: list[Rejected] = []
        todo: list[Query] = []
        for query in batch:
            text = query.text.strip()
            if not text:
                rejected.append(Rejected(query.model_dump(), "empty_query"))
            elif len(text) > MAX_QUERY_CHARS:
                rejected.append(Rejected(query.model_dump(), "query_too_long"))
            elif "\x00" in text:
                rejected.append(Rejected(query.model_dump(), "binary_query"))
            else:
                todo.append(query)
        generations = self.backend.generate([self.prompt.conversation(query=q.text.strip()) for q in todo],
                                            self.sampling)
        templates: list[Template] = []
        for query, generation in zip(todo, generations, strict=True):
            if not generation.ok:
                rejected.append(Rejected(query.model_dump(), f"backend_error: {generation.error}"))
                continue
            parsed = parse_templatizer_output(generation.text)
            if isinstance(parsed, str):
                row = query.model_dump() | {"output": generation.text}
                rejected.append(Rejected(row, parsed))
                continue
            templates.append(Template(
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
            ))
        return StageResult(templates, rejected)
