"""Teacher data for distilling one stage: the stage's own prompts, answered by a teacher, kept when the
stage's own parser and gates accept the answer (silver data, filtered as in the paper).

The teacher sees the prompt the stage sends (`teacher_prompt_version`, by default the stage's few-shot
prompt); the student is trained on the prompt it will be served with (`student_prompt_version`, by default
the zero-shot contract of the released FineInstructions models: the bare query, or the JSON object of
template and document), built by the same stage code. Completions are written in the student prompt's
reply format.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from fineinstructions.backends.base import Backend, Conversation, SamplingParams
from fineinstructions.config import stage_config
from fineinstructions.contracts.excerpts import NormalizedText
from fineinstructions.contracts.templates import template_variables
from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.atomic import atomic_path
from fineinstructions.io.readers import InputError, ReadStats, read_rows
from fineinstructions.io.rows import read_typed
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.prompts import DEFAULT_VERSIONS
from fineinstructions.records import Match, Query
from fineinstructions.stages.base import document_major
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.instantiate import InstantiateStage
from fineinstructions.stages.registry import stage_class
from fineinstructions.stages.templatize import TemplatizeStage, template_id

StageName = Literal["templatize", "instantiate"]
STAGES: tuple[StageName, ...] = ("templatize", "instantiate")
# The zero-shot prompt presets of the released stage models: short prompts a small student can be served with.
STUDENT_PROMPT_VERSIONS: dict[str, str] = {"templatize": "query_templatizer", "instantiate": "template_instantiator"}
NULL_COMPLETION = "null"


class DistillError(FineInstructionsError):
    """Bad distillation input or settings (named problem, no traceback from deep inside a library)."""


@dataclass
class Example:
    """One supervised example: the student's prompt conversation and the teacher's accepted reply."""

    messages: list[dict[str, str]]
    completion: str
    stage: str
    prompt_version: str  # of `messages` (the student prompt)
    teacher_model: str
    teacher_prompt_version: str = ""
    is_null: bool = False  # instantiate: the teacher said the template does not fit the document
    input_id: str = ""


@dataclass
class TeacherReport:
    """What the teacher step produced: inputs, examples kept, rejects by reason, and what the calls cost."""

    inputs: int = 0
    kept: int = 0
    nulls: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    cache_hits: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rejected": dict(self.rejected.most_common()), "seconds": round(self.seconds, 2)}


def make_stage(stage: str, backend: Backend, prompt_version: str | None = None) -> TemplatizeStage | InstantiateStage:
    """The pipeline stage `stage` with its config defaults (and `prompt_version`), served by `backend`: built
    through the stage's `from_config`, like every stage of a run."""
    check_stage(stage)
    section = {"prompt_version": prompt_version} if prompt_version else {}
    config = stage_config({stage: section})
    try:
        built = stage_class(stage).from_config(config, StageContext(config, engines={stage: backend}))
    except FileNotFoundError as err:
        raise DistillError(f"unknown {stage} prompt version {prompt_version!r}: {err}") from err
    assert isinstance(built, TemplatizeStage | InstantiateStage)
    return built


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise DistillError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")


def prompt_versions(stage: str, teacher: str | None, student: str | None) -> tuple[str, str]:
    """(teacher, student) prompt versions with their defaults filled in."""
    check_stage(stage)
    return teacher or DEFAULT_VERSIONS[stage], student or STUDENT_PROMPT_VERSIONS[stage]


# -- inputs -----------------------------------------------------------------------------------------------


def load_queries(source: str, limit: int | None = None, filter_queries: bool = True) -> list[Query]:
    """Queries from a .jsonl/.json/.parquet file or folder, or `sharegpt` (the packaged ShareGPT prompts),
    through the pipeline's query filter (normalise, moderate, deduplicate) unless `filter_queries` is off."""
    if source == "sharegpt":
        from fineinstructions.io.sources import sharegpt_queries

        # Read a few times more than needed: the filter drops non-English, overlong and duplicate prompts.
        pool = list(islice(sharegpt_queries(), None if limit is None else max(3 * limit, limit + 50)))
    else:
        try:
            pool = read_typed(source, Query)
        except InputError as err:
            raise DistillError(str(err)) from err
    if filter_queries:
        config = stage_config({})
        pool = stage_class("query_filter").from_config(config, StageContext(config)).process(pool).records
    queries = pool[:limit] if limit is not None else pool
    if not queries:
        raise DistillError(f"no usable queries in {source}")
    return queries


def load_matches(source: str, limit: int | None = None) -> list[Match]:
    """(template, document) inputs of instantiate: a pipeline run folder (its `work/match` shards), Match
    Parquet files, or rows with `template` and `text` (or `document`) columns; document-major order."""
    path = Path(source).expanduser()
    if RunFolder(path).stage_dir("match").is_dir():
        path = RunFolder(path).stage_dir("match")
    stats = ReadStats()
    try:
        rows = list(read_rows(str(path), stats=stats))
    except InputError as err:
        raise DistillError(str(err)) from err
    matches: list[Match] = []
    for i, row in enumerate(rows):
        template = row.get("template", row.get("instruction_template"))
        text = row.get("text", row.get("document"))
        if not isinstance(template, str) or not isinstance(text, str) or not template.strip() or not text.strip():
            stats.skip("missing_template_or_document", f"row {i}")
            continue
        document_id = str(row.get("document_id") or f"doc-{i}")
        matches.append(Match(document_id=document_id, template_id=str(row.get("template_id") or template_id(template)),
                             score=float(row.get("score") or 0.0), rank=int(row.get("rank") or 0),
                             part=int(row.get("part") or 0) if row.get("part") is not None else -1, text=text,
                             template=template, title=str(row.get("title") or "")))
    matches = document_major(matches)[:limit] if limit is not None else document_major(matches)
    if not matches:
        raise DistillError(f"no (template, document) rows in {source} (skipped: {dict(stats.skipped)})")
    return matches


def load_inputs(stage: str, source: str, limit: int | None = None, filter_queries: bool = True) -> list[Any]:
    """The stage's input records from `source` (queries for templatize, matches for instantiate)."""
    check_stage(stage)
    return load_queries(source, limit, filter_queries) if stage == "templatize" else load_matches(source, limit)


def input_id(record: Query | Match) -> str:
    return record.query_id if isinstance(record, Query) else f"{record.document_id}|{record.template_id}"


def split_heldout(stage: str, inputs: Sequence[Any], n_eval: int) -> tuple[list[Any], list[Any]]:
    """(train, held-out) inputs: the last `n_eval` queries, or the last documents' matches for instantiate
    (a held-out document is never trained on)."""
    if n_eval <= 0:
        return list(inputs), []
    if stage == "templatize":
        return list(inputs[:-n_eval]), list(inputs[-n_eval:])
    documents = list(dict.fromkeys(m.document_id for m in inputs))
    held: set[str] = set()
    count = 0
    for document in reversed(documents):
        if count >= n_eval or len(held) >= len(documents) - 1:
            break
        held.add(document)
        count += sum(m.document_id == document for m in inputs)
    return [m for m in inputs if m.document_id not in held], [m for m in inputs if m.document_id in held][:n_eval]


# -- teacher ------------------------------------------------------------------------------------------------


def generate_examples(stage: str, inputs: Sequence[Any], teacher: Backend, *,
                      teacher_prompt_version: str | None = None, student_prompt_version: str | None = None,
                      batch_size: int = 8, retries: int = 0, max_null_share: float = 0.25,
                      max_tokens: int | None = None,
                      progress: Callable[[int, int, int], None] | None = None) -> tuple[list[Example], TeacherReport]:
    """Have `teacher` answer the stage's prompts in batches; keep the answers the stage accepts.

    `teacher` should sit behind a CachedBackend, so an interrupted run resumes without paying twice.
    Templatize retries a rejected query `retries` times at the stage's retry temperature and seed. For
    instantiate, a null answer (the template does not fit) is a target too, up to `max_null_share` of the
    examples kept. `max_tokens` overrides the stage's generation limit (its config knob of the same name).
    `progress(done, total, kept)` is called after each batch.
    """
    if batch_size < 1:
        raise DistillError("batch_size must be at least 1")
    if not 0 <= max_null_share <= 1:
        raise DistillError(f"max_null_share must lie in [0, 1], got {max_null_share}")
    teacher_version, student_version = prompt_versions(stage, teacher_prompt_version, student_prompt_version)
    teacher_stage = make_stage(stage, teacher, teacher_version)
    student_stage = make_stage(stage, teacher, student_version)  # builds the student's prompts only
    if max_tokens is not None:
        if isinstance(teacher_stage, TemplatizeStage):
            teacher_stage.max_tokens = max_tokens
        else:
            teacher_stage.sampling = replace(teacher_stage.sampling, max_tokens=max_tokens)
    report = TeacherReport(inputs=len(inputs))
    before = _stats(teacher)
    if stage == "templatize":
        examples = _templatize(teacher_stage, student_stage, inputs, batch_size, retries, report, progress)  # type: ignore[arg-type]
    else:
        examples = _instantiate(teacher_stage, student_stage, inputs, batch_size, report, progress)  # type: ignore[arg-type]
        examples = cap_nulls(examples, max_null_share, report)
    after = _stats(teacher)
    report.requests = int(after[0] - before[0])
    report.completion_tokens = int(after[1] - before[1])
    report.seconds = after[2] - before[2]
    report.cache_hits = int(after[3] - before[3])
    report.kept = len(examples)
    report.nulls = sum(e.is_null for e in examples)
    return examples, report


def _stats(backend: Backend) -> tuple[int, int, float, float]:
    s = backend.stats
    return s.requests, s.completion_tokens, s.seconds, s.extra.get("cache_hits", 0)


def _templatize(teacher: TemplatizeStage, student: TemplatizeStage, queries: Sequence[Query], batch_size: int,
                retries: int, report: TeacherReport,
                progress: Callable[[int, int, int], None] | None) -> list[Example]:
    examples: list[Example] = []
    todo: list[Query] = []
    for query in queries:
        reason = teacher.input_error(query)
        if reason:
            report.rejected[reason] += 1
        else:
            todo.append(query)
    for start in range(0, len(todo), batch_size):
        pending = todo[start : start + batch_size]
        kept: dict[str, Example] = {}
        last: dict[str, str] = {}
        for attempt in range(retries + 1):
            if not pending:
                break
            sampling = SamplingParams(temperature=teacher.temperature if attempt == 0 else teacher.retry_temperature,
                                      max_tokens=teacher.max_tokens, seed=teacher.seed + attempt)
            generations = teacher.backend.generate([teacher.conversation(q) for q in pending], sampling)
            still = []
            for query, generation in zip(pending, generations, strict=True):
                outcome = teacher.check(query, generation)
                if isinstance(outcome, str):
                    last[query.query_id] = outcome.split(":")[0]
                    if not outcome.startswith("backend_error"):
                        still.append(query)
                    continue
                completion = json.dumps({"template": outcome.template, "compatible_document_description":
                                         outcome.compatible_document_description}, ensure_ascii=False)
                kept[query.query_id] = _example(student, teacher, student.conversation(query), completion, query)
            pending = still
        for query in todo[start : start + batch_size]:
            if query.query_id in kept:
                examples.append(kept[query.query_id])
            else:
                report.rejected[last[query.query_id]] += 1
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo), len(examples))
    return examples


def _instantiate(teacher: InstantiateStage, student: InstantiateStage, matches: Sequence[Match], batch_size: int,
                 report: TeacherReport, progress: Callable[[int, int, int], None] | None) -> list[Example]:
    examples: list[Example] = []
    usable = []
    for match in matches:
        if template_variables(match.template):
            usable.append(match)
        else:
            report.rejected["template_without_variables"] += 1
    usable = document_major(usable)
    json_reply = bool(student.prompt.user_json)  # the released model's contract answers with a JSON object
    normalized: dict[str, NormalizedText] = {}
    for start in range(0, len(usable), batch_size):
        batch = usable[start : start + batch_size]
        generations = teacher.backend.generate([teacher.conversation(m) for m in batch], teacher.sampling)
        for match, generation in zip(batch, generations, strict=True):
            if match.document_id not in normalized:  # once per document, not per candidate
                normalized[match.document_id] = NormalizedText(match.text)
            doc = normalized[match.document_id]
            outcome = teacher.gate(match, generation, doc)
            if not isinstance(outcome, tuple):
                if outcome.reason == "null":
                    examples.append(_example(student, teacher, student.conversation(match), NULL_COMPLETION, match,
                                             is_null=True))
                else:
                    report.rejected[outcome.reason.split(":")[0]] += 1
                continue
            parsed = outcome[0]
            completion = (json.dumps({"instantiated_instruction": parsed.instruction, "answer": parsed.answer},
                                     ensure_ascii=False) if json_reply else generation.text.strip())
            examples.append(_example(student, teacher, student.conversation(match), completion, match))
        if progress:
            progress(min(start + batch_size, len(usable)), len(usable), len(examples))
    return examples


def _example(student: TemplatizeStage | InstantiateStage, teacher: TemplatizeStage | InstantiateStage,
             messages: Conversation, completion: str, record: Query | Match, is_null: bool = False) -> Example:
    return Example(messages=[dict(m) for m in messages], completion=completion, stage=student.name,
                   prompt_version=student.prompt.version, teacher_model=teacher.backend.model_id,
                   teacher_prompt_version=teacher.prompt.version, is_null=is_null, input_id=input_id(record))


def cap_nulls(examples: list[Example], max_null_share: float, report: TeacherReport | None = None) -> list[Example]:
    """Keep null examples (in order) up to `max_null_share` of all examples kept; count the rest."""
    answers = sum(not e.is_null for e in examples)
    if max_null_share >= 1:
        return examples
    allowed = int(max_null_share * answers / (1 - max_null_share) + 1e-9)
    out, nulls = [], 0
    for example in examples:
        if example.is_null:
            nulls += 1
            if nulls > allowed:
                if report is not None:
                    report.rejected["null_over_share"] += 1
                continue
        out.append(example)
    return out


# -- files --------------------------------------------------------------------------------------------------

_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("completion", pa.string()), ("stage", pa.string()), ("prompt_version", pa.string()),
    ("teacher_model", pa.string()), ("teacher_prompt_version", pa.string()), ("is_null", pa.bool_()),
    ("input_id", pa.string()),
])


def write_examples(path: str | Path, examples: Sequence[Example]) -> Path:
    """Write examples atomically as Parquet, or as JSON lines when `path` ends in .jsonl."""
    path = Path(path)
    rows = [asdict(e) for e in examples]
    with atomic_path(path) as tmp:
        if path.suffix == ".jsonl":
            with tmp.open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), tmp, compression="zstd")
    return path


def read_examples(path: str | Path, stage: str | None = None) -> list[Example]:
    """Examples from a Parquet or JSON-lines file (our own, or anyone's rows with `messages` and `completion`).

    Raises DistillError naming the first bad row, or a row made for another stage than `stage`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistillError(f"examples file not found: {path}")
    try:
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
        else:
            with path.open(encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DistillError(f"cannot read examples file {path}: {err}") from err
    examples = []
    for i, row in enumerate(rows):
        messages, completion = row.get("messages"), row.get("completion")
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise DistillError(f"{path} row {i}: `messages` must be a non-empty list of {{role, content}} objects")
        if not isinstance(completion, str) or not completion.strip():
            raise DistillError(f"{path} row {i}: `completion` must be a non-empty string")
        row_stage = row.get("stage") or stage or ""
        if stage and row_stage != stage:
            raise DistillError(f"{path} row {i} was made for stage {row_stage!r}, not {stage!r}")
        examples.append(Example(
            messages=[{"role": m["role"], "content": m["content"]} for m in messages], completion=completion,
            stage=row_stage, prompt_version=str(row.get("prompt_version") or ""),
            teacher_model=str(row.get("teacher_model") or ""),
            teacher_prompt_version=str(row.get("teacher_prompt_version") or ""), is_null=bool(row.get("is_null")),
            input_id=str(row.get("input_id") or "")))
    if not examples:
        raise DistillError(f"{path} holds no examples")
    return examples
