"""Typed records that flow through the pipeline, each with its Arrow schema.

Data flows one way: Query -> Template -> (Document, Template) -> Match -> Pair; the baseline recipes make
Document -> SyntheticText. Every stage reads and writes these records; on disk they are Parquet files whose
schema is derived from the model.
"""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    """Base of every pipeline record: strict fields, an Arrow schema, and table conversion."""

    model_config = ConfigDict(extra="ignore", frozen=False)
    kind: ClassVar[str] = "record"

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        return _schema_for(cls)

    @classmethod
    def to_table(cls, records: typing.Sequence[Record]) -> pa.Table:
        rows = [r.model_dump() for r in records]
        return pa.Table.from_pylist(rows, schema=cls.arrow_schema())

    @classmethod
    def from_table(cls: type[R], table: pa.Table) -> list[R]:
        return [cls.model_validate(row) for row in table.to_pylist()]

    @classmethod
    def parse_rows(cls: type[R], rows: typing.Iterable[dict[str, Any]]) -> tuple[list[R], list[tuple[dict, str]]]:
        """Validate raw rows; return the good records and (row, reason) for each rejected row."""
        good: list[R] = []
        bad: list[tuple[dict, str]] = []
        for row in rows:
            try:
                good.append(cls.model_validate(row))
            except ValidationError as err:
                first = err.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "row"
                bad.append((row, f"invalid_{field}: {first['msg']}"))
        return good, bad


class Query(Record):
    """A real user-written query: the raw material for a template."""

    kind: ClassVar[str] = "query"
    query_id: str
    text: str
    source: str = ""


class Template(Record):
    """An instruction template with `<fi>` variables and the description of documents that fit it."""

    kind: ClassVar[str] = "template"
    template_id: str
    template: str
    compatible_document_description: str
    variables: list[str] = Field(default_factory=list)
    query_id: str = ""
    query: str = ""
    source: str = ""
    model_id: str = ""
    prompt_version: str = ""
    completion_tokens: int = 0
    popularity: int = 1  # how many queries this template absorbed in deduplication


class Document(Record):
    """A pre-training document (e.g. a web page or an encyclopedia lead section)."""

    kind: ClassVar[str] = "document"
    document_id: str
    text: str
    title: str = ""
    source: str = ""


class Match(Record):
    """One candidate template for one document, from embedding retrieval."""

    kind: ClassVar[str] = "match"
    document_id: str
    template_id: str
    score: float
    rank: int
    part: int = -1  # -1: the whole document; k >= 0: the k-th Gaussian coverage chunk
    text: str = ""
    title: str = ""
    template: str = ""
    compatible_document_description: str = ""


class Pair(Record):
    """An instantiated (instruction, answer) pair grounded in its document, with judgement and provenance.

    The released FineInstructions columns are kept (`document_id` stands for `warc_record_id`).
    """

    kind: ClassVar[str] = "pair"
    document_id: str
    template_id: str
    text: str
    template: str
    instantiated_instruction: str
    answer: str
    answer_with_markers: str = ""
    excerpt_coverage: float = 0.0
    excerpt_count: int = 0
    synthetic_token_count: int = 0
    token_count: int = 0
    completion_tokens: int = 0
    match_score: float = 0.0
    match_part: int = -1
    instantiator_model: str = ""
    instantiate_prompt_version: str = ""
    judge_score: int | None = None
    judge_feedback: str = ""
    judge_model: str = ""
    judge_prompt_version: str = ""
    config_fingerprint: str = ""


class SyntheticText(Record):
    """Training text a baseline recipe (`wrap`, `nemotron_qa`, `ipt`) made from one chunk of one document, in
    that recipe's own layout, with its token counts (the arms of an experiment are fitted to equal tokens)."""

    kind: ClassVar[str] = "synthetic"
    document_id: str
    recipe: str
    chunk: int = 0  # which chunk of the document (recipes that work on chunks); 0 otherwise
    style: str = ""  # wrap: the rephrasing style (easy, medium, hard, qa)
    source_text: str  # the document text (or chunk) it was made from
    text: str  # the training text
    items: int = 1  # question/answer pairs in it (nemotron_qa, ipt); 1 for a rephrasing
    token_count: int = 0  # tokens of `text`
    source_token_count: int = 0  # tokens of `source_text`
    completion_tokens: int = 0
    model: str = ""
    prompt_version: str = ""
    config_fingerprint: str = ""


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (Query, Template, Document, Match, Pair, SyntheticText)
}

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Map a field annotation to (arrow type, nullable)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation}")
        arrow_type, _ = _arrow_type(args[0])
        return arrow_type, True
    if origin is list:
        (item,) = get_args(annotation)
        item_type, _ = _arrow_type(item)
        return pa.list_(item_type), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Arrow type for {annotation!r}")


def _schema_for(cls: type[Record]) -> pa.Schema:
    hints = typing.get_type_hints(cls)
    fields = []
    for name in cls.model_fields:
        arrow_type, nullable = _arrow_type(hints[name])
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    return pa.schema(fields, metadata={b"fineinstructions.record": cls.kind.encode()})
