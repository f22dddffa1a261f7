"""Rows to records: queries and documents by a text field (a chat yields its first user turn), templates
by the column names of our own rows or of the released FineTemplates; and `read_typed`, the one way to read
records of one type (Query, Document, Template, Match, Pair) from any input `read_rows` reads.

A row that cannot become a record is skipped and counted in `ReadStats` under a named reason.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any, TypeVar, cast

from fineinstructions.io.formats import has_lone_surrogate
from fineinstructions.io.read_stats import ReadStats
from fineinstructions.io.readers import read_rows
from fineinstructions.records import Document, Query, Record, Template

R = TypeVar("R", bound=Record)
QueryOrDocument = TypeVar("QueryOrDocument", Query, Document)


def _field(row: dict[str, Any], name: str) -> Any:
    """A possibly nested field: "meta.url" reads row["meta"]["url"]."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _string_problem(text: str) -> str | None:
    """Why a string cannot go into a record (NUL characters, lone surrogates), or None."""
    if "\x00" in text:
        return "nul_in_text"
    if has_lone_surrogate(text):
        return "lone_surrogate"
    return None


def first_user_turn(messages: Any) -> str | None:
    """The first user message of a chat (OpenAI `role/content` or ShareGPT `from/value` style)."""
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if role in ("user", "human") and isinstance(content, str):
            return content
    return None


def _text_of(row: dict[str, Any], text_field: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, skip reason) for a row's text field; a chat yields its first user turn."""
    value = _field(row, text_field)
    if isinstance(value, list):
        if not any(isinstance(m, dict) for m in value):
            return None, f"ill_typed_{text_field}"
        value = first_user_turn(value)
        if value is None:
            return None, "no_user_turn"
    if value is None:
        return None, f"missing_{text_field}"
    if not isinstance(value, str):
        return None, f"ill_typed_{text_field}"
    problem = _string_problem(value)
    return (None, problem) if problem else (value, None)


def _record_id(raw: Any) -> str | None:
    """A row's id as text, or None when it cannot be one (bool, container, NaN, empty or broken string)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):  # ints stored as floats (e.g. a column with nulls) keep their int form
        return (str(int(raw)) if raw.is_integer() else str(raw)) if math.isfinite(raw) else None
    if isinstance(raw, str) and raw.strip() and _string_problem(raw) is None:
        return raw
    return None


class _SeenIds:
    """Ids seen so far, kept as 8-byte digests (about 60 bytes a row in memory)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def add(self, key: str) -> bool:
        """Remember `key`; False when it was seen before."""
        digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True


def _fields_hint(row: dict[str, Any]) -> str:
    return f" (fields: {', '.join(sorted(map(str, row))[:8]) or 'none'})"


def rows_to_records(rows: Iterable[dict[str, Any]], kind: type[QueryOrDocument], text_field: str = "text",
                    id_field: str | None = None, title_field: str | None = None, source: str = "",
                    stats: ReadStats | None = None, limit: int | None = None) -> Iterator[QueryOrDocument]:
    """Map rows to Query or Document records; bad rows are counted under a reason and skipped.

    Reasons: `missing_<text_field>` (absent or null), `ill_typed_<text_field>`, `no_user_turn` (a chat without
    one), `nul_in_text`, `lone_surrogate`, `invalid_id` (bool, container, NaN, empty), `duplicate_id`. A text
    field that holds a chat (a list of messages) yields its first user turn. Empty or overlong texts are kept:
    the stages drop them with their own reasons (e.g. match's `empty_document`, `document_too_long`).
    """
    stats = stats if stats is not None else ReadStats()
    if limit is not None and limit <= 0:
        return
    seen = _SeenIds()
    made = 0
    for i, row in enumerate(rows):
        text, reason = _text_of(row, text_field)
        if reason or text is None:
            reason = reason or f"missing_{text_field}"
            stats.skip(reason, f"row {i}{_fields_hint(row) if reason.startswith('missing_') else ''}", position=i)
            continue
        raw_id = _field(row, id_field) if id_field else row.get("id", row.get("document_id", row.get("query_id")))
        record_id = _record_id(raw_id) if raw_id is not None else f"{source or 'row'}-{i}"
        if record_id is None:
            stats.skip("invalid_id", f"row {i} (id {str(raw_id)[:40]!r} of type {type(raw_id).__name__})", position=i)
            continue
        if not seen.add(record_id):
            stats.skip("duplicate_id", f"row {i} (id {record_id[:80]!r})", position=i)
            continue
        record: Query | Document
        if kind is Query:
            record = Query(query_id=record_id, text=text, source=source)
        else:
            title = _field(row, title_field) if title_field else row.get("title", "")
            record = Document(document_id=record_id, text=text, title=_title(title), source=source)
        yield cast(QueryOrDocument, record)
        made += 1
        if limit is not None and made >= limit:
            return


def _title(raw: Any) -> str:
    """A title as text; an unusable one (container, broken string) becomes empty, it is optional."""
    if isinstance(raw, str):
        return raw if _string_problem(raw) is None else ""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    return ""


TEMPLATE_ALIASES = {
    "template": ("template", "instruction_template", "fineinstructions_template"),
    "compatible_document_description": ("compatible_document_description", "document_description",
                                        "compatible_document"),
    "template_id": ("template_id", "id"),
    "query": ("query", "source_query", "original_query"),
    "source": ("source", "query_source", "dataset"),
}


def rows_to_templates(rows: Iterable[dict[str, Any]], stats: ReadStats | None = None,
                      limit: int | None = None) -> Iterator[Template]:
    """Templates from our own rows or rows in the released FineTemplates schema (column aliases accepted).

    Reasons: `missing_template_fields`, `invalid_template_<why>` (the `<fi>` contract of
    `contracts.templates.template_error`, plus `empty_description`), `nul_in_text`, `lone_surrogate`,
    `invalid_template_id`, `duplicate_template_id` (for ids given in the rows).
    """
    from fineinstructions.contracts.templates import template_error, template_variables
    from fineinstructions.stages.templatize import template_id

    stats = stats if stats is not None else ReadStats()
    if limit is not None and limit <= 0:
        return
    seen = _SeenIds()
    made = 0
    for i, row in enumerate(rows):
        values = {name: next((row[a] for a in aliases if isinstance(row.get(a), str | int)), None)
                  for name, aliases in TEMPLATE_ALIASES.items()}
        text, description = values["template"], values["compatible_document_description"]
        if not isinstance(text, str) or not isinstance(description, str):
            stats.skip("missing_template_fields", f"row {i}{_fields_hint(row)}", position=i)
            continue
        problem = next((p for v in values.values() if isinstance(v, str) and (p := _string_problem(v))), None)
        error = template_error(text) or (None if description.strip() else "empty_description")
        raw_id = values["template_id"]
        given_id = _record_id(raw_id) if raw_id is not None else None
        if problem:
            stats.skip(problem, f"row {i}", position=i)
        elif error:
            stats.skip(f"invalid_template_{error}", f"row {i} ({text[:80]!r})", position=i)
        elif raw_id is not None and given_id is None:
            stats.skip("invalid_template_id", f"row {i} (id {str(raw_id)[:40]!r})", position=i)
        elif given_id is not None and not seen.add(given_id):
            stats.skip("duplicate_template_id", f"row {i} (id {given_id[:80]!r})", position=i)
        else:
            popularity = row.get("popularity")
            yield Template(
                template_id=given_id if given_id is not None else template_id(text),
                template=text, compatible_document_description=description, variables=template_variables(text),
                query=str(values["query"] or ""), source=str(values["source"] or ""),
                popularity=popularity if isinstance(popularity, int) and not isinstance(popularity, bool)
                and popularity >= 1 else 1,
            )
            made += 1
            if limit is not None and made >= limit:
                return


# -- any input to typed records ------------------------------------------------------------------------

# The columns that mark a row as already typed. The released FineTemplates rows carry a template's required
# columns but not its `variables`, so a template row is typed only when it has every column of ours.
_TYPED_COLUMNS: dict[type[Record], frozenset[str]] = {
    Query: frozenset({"query_id", "text"}),
    Document: frozenset({"document_id", "text"}),
    Template: frozenset(Template.model_fields),
}


def read_typed(source: str | Path, record_type: type[R], *, text_field: str = "text", id_field: str | None = None,
               title_field: str | None = None, limit: int | None = None, stats: ReadStats | None = None,
               without: Sequence[str] = (), source_name: str | None = None, split: str = "train",
               hf_config: str | None = None, revision: str | None = None,
               data_files: str | list[str] | dict[str, Any] | None = None) -> list[R]:
    """The `record_type` records of `source`: a file, a folder, `-` (stdin) or `hf:NAME`, as `read_rows` reads.

    Rows that already carry the record's schema are validated as they are (`record_type.parse_rows`): query and
    document rows with `query_id`/`document_id` and `text` columns, template rows with every Template column
    (as `io.writers.write_records` writes them), and Match and Pair rows always. A row that fails validation is
    skipped and counted as `invalid_<field>`. The first row decides for the whole input.

    Other rows are mapped: queries and documents by `text_field`, `id_field` and `title_field`
    (`rows_to_records`; ids default to `<source_name>-<row>`), templates by our column names or those of the
    released FineTemplates (`rows_to_templates`). Naming a field (`text_field` other than "text", `id_field`,
    `title_field`) asks for this mapping even for typed rows. Skipped rows are counted under those functions'
    reasons.

    `limit` caps the records kept (no row past the last one kept is read). `without` names columns left unread
    (they come back as "", as in `io.writers.read_records`), e.g. the document text of pairs when only their
    counts and scores are needed. `source_name` (default: the file's stem, or the dataset name of `hf:NAME`) is
    the records' `source`. `split`, `hf_config`, `revision` and `data_files` apply to `hf:` sources.

    Raises `InputError` when the input cannot be read at all; an input without usable rows gives `[]`, with
    the reasons in `stats`.
    """
    stats = stats if stats is not None else ReadStats()
    source = str(source)
    rows = read_rows(source, split, stats, hf_config, revision, data_files, without)
    if limit is not None and limit <= 0:
        return []
    if without:
        blank = dict.fromkeys(without, "")
        rows = (row | blank for row in rows)
    name = source_name if source_name is not None else _source_name(source)
    records = typed_records(rows, record_type, text_field=text_field, id_field=id_field, title_field=title_field,
                            source_name=name, stats=stats)
    return list(islice(records, limit))


def typed_records(rows: Iterable[dict[str, Any]], record_type: type[R], *, text_field: str = "text",
                  id_field: str | None = None, title_field: str | None = None, source_name: str = "rows",
                  stats: ReadStats | None = None) -> Iterator[R]:
    """`rows` as `record_type` records, validated or mapped as `read_typed` describes (the first row decides);
    skipped rows are counted in `stats`, with their positions when it keeps them."""
    stats = stats if stats is not None else ReadStats()
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return iter(())
    rows = chain([first], iterator)
    records: Iterable[Record]
    if _is_typed(first, record_type, text_field != "text" or id_field is not None or title_field is not None):
        records = _validated(rows, record_type, source_name, stats)
    elif record_type is Template:
        records = rows_to_templates(rows, stats)
    elif record_type is Query:
        records = rows_to_records(rows, Query, text_field, id_field, title_field, source_name, stats)
    else:
        records = rows_to_records(rows, Document, text_field, id_field, title_field, source_name, stats)
    return cast(Iterator[R], iter(records))


def _is_typed(row: dict[str, Any], record_type: type[Record], fields_named: bool) -> bool:
    """Whether `row` carries `record_type`'s schema (Match and Pair rows always do: they have no plain form)."""
    columns = _TYPED_COLUMNS.get(record_type)
    if columns is None:
        return True
    return columns <= row.keys() and not (fields_named and record_type in (Query, Document))


def _source_name(source: str) -> str:
    """What records read from `source` name as their source: a dataset's name, or a file's or folder's stem."""
    if source.startswith("hf:"):
        return source[3:]
    return "stdin" if source == "-" else Path(source).stem


def _validated(rows: Iterable[dict[str, Any]], record_type: type[R], name: str, stats: ReadStats) -> Iterator[R]:
    """Rows validated as `record_type`; a row that fails is counted under `invalid_<field>` and skipped."""
    for i, row in enumerate(rows):
        good, bad = record_type.parse_rows((row,))
        if bad:
            reason = bad[0][1]
            stats.skip(reason.split(":")[0], f"{name} row {i} ({reason})", position=i)
        else:
            yield good[0]
