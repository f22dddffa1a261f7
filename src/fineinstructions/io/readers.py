"""Read rows from JSONL, Parquet, folders of text files and Hugging Face datasets, and map them to records.

Every reader yields plain dicts and counts what it could not read (with a logged reason) instead of
failing the run; an input that cannot be opened at all raises `InputError` with a clear message.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fineinstructions.records import Document, Query, Template

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".html", ".htm"}
MAX_TEXT_FILE_BYTES = 50 * 1024 * 1024


class InputError(ValueError):
    """An input that cannot be read at all (missing, unreadable, unknown format)."""


@dataclass
class ReadStats:
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        log.warning("skipped %s: %s", where, reason)


def read_rows(source: str, split: str = "train", stats: ReadStats | None = None,
              hf_config: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of `source`: a .jsonl/.json file, a .parquet file or folder, a folder of text files,
    or `hf:NAME` (a Hugging Face dataset by name or local path, streamed)."""
    stats = stats if stats is not None else ReadStats()
    if source.startswith("hf:"):
        yield from _read_hf(source[3:], split, hf_config, stats)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path} (for a Hugging Face dataset use hf:NAME)")
    if path.is_dir():
        # A stage's output folder keeps its dropped rows under rejects/: they are not input.
        parquet_files = sorted(p for p in path.rglob("*.parquet") if "rejects" not in p.relative_to(path).parts)
        if parquet_files:
            for file in parquet_files:
                yield from _read_parquet(file, stats)
        else:
            yield from _read_text_folder(path, stats)
    elif path.suffix in (".jsonl", ".ndjson") or path.name.endswith(".jsonl.gz"):
        yield from _read_jsonl(path, stats)
    elif path.suffix == ".json":
        yield from _read_json(path, stats)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path, stats)
    elif path.suffix in TEXT_SUFFIXES:
        yield from _read_text_files([path], path.parent, stats)
    else:
        raise InputError(f"unknown input format for {path}: use .jsonl, .json, .parquet, a folder, or hf:NAME")


def _read_jsonl(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        handle = opener(path, "rt", encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"cannot open {path}: {err}") from err
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                stats.skip("malformed_json", f"{path}:{lineno} ({err.msg})")
                continue
            if not isinstance(row, dict):
                stats.skip("not_an_object", f"{path}:{lineno}")
                continue
            stats.rows += 1
            yield row


def _read_json(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path} as JSON: {err}") from err
    rows = value
    if isinstance(value, dict):
        rows = value.get("data", value.get("rows"))
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON list of objects (or an object with a 'data' list)")
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            stats.rows += 1
            yield row
        else:
            stats.skip("not_an_object", f"{path}[{i}]")


def _read_parquet(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise InputError(f"cannot read {path} as Parquet: {err}") from err
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            stats.rows += 1
            yield row


def _read_text_folder(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise InputError(f"{path} holds no .parquet files and no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
    yield from _read_text_files(files, path, stats)


def _read_text_files(files: Iterable[Path], root: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    for file in files:
        rel = file.relative_to(root).as_posix()
        if file.stat().st_size > MAX_TEXT_FILE_BYTES:
            stats.skip("file_too_large", rel)
            continue
        raw = file.read_bytes()
        if b"\x00" in raw[:4096]:
            stats.skip("binary_file", rel)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            stats.skip("not_utf8", rel)
            continue
        stats.rows += 1
        yield {"id": rel, "text": text, "title": file.stem}


def _read_hf(name: str, split: str, config: str | None, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Stream a Hugging Face dataset by hub name (online) or local path (offline)."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # datasets raises many types (missing, offline, bad config)
        raise InputError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {err}") from err
    for row in dataset:
        stats.rows += 1
        yield dict(row)


def _field(row: dict[str, Any], name: str) -> Any:
    """A possibly nested field: "meta.url" reads row["meta"]["url"]."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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


def rows_to_records(rows: Iterable[dict[str, Any]], kind: type[Query] | type[Document], text_field: str = "text",
                    id_field: str | None = None, title_field: str | None = None, source: str = "",
                    stats: ReadStats | None = None, limit: int | None = None) -> Iterator[Query | Document]:
    """Map rows to Query or Document records; rows with a missing or ill-typed field are counted and skipped.

    A text field that holds a chat (a list of messages) yields its first user turn.
    """
    stats = stats if stats is not None else ReadStats()
    made = 0
    for i, row in enumerate(rows):
        if limit is not None and made >= limit:
            return
        text = _field(row, text_field)
        if isinstance(text, list):
            text = first_user_turn(text)
        if text is None:
            stats.skip(f"missing_{text_field}", f"row {i}")
            continue
        if not isinstance(text, str):
            stats.skip(f"ill_typed_{text_field}", f"row {i}")
            continue
        raw_id = _field(row, id_field) if id_field else row.get("id", row.get("document_id", row.get("query_id")))
        record_id = str(raw_id) if raw_id is not None else f"{source or 'row'}-{i}"
        if kind is Query:
            yield Query(query_id=record_id, text=text, source=source)
        else:
            title = _field(row, title_field) if title_field else row.get("title", "")
            yield Document(document_id=record_id, text=text, title=str(title or ""), source=source)
        made += 1


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
    """Templates from our own rows or rows in the released FineTemplates schema (column aliases accepted);
    rows whose template breaks the `<fi>` contract are counted and skipped."""
    from fineinstructions.contracts.templates import template_error, template_variables
    from fineinstructions.stages.templatize import template_id

    stats = stats if stats is not None else ReadStats()
    made = 0
    for i, row in enumerate(rows):
        if limit is not None and made >= limit:
            return
        values = {name: next((row[a] for a in aliases if isinstance(row.get(a), str | int)), None)
                  for name, aliases in TEMPLATE_ALIASES.items()}
        text, description = values["template"], values["compatible_document_description"]
        if not isinstance(text, str) or not isinstance(description, str):
            stats.skip("missing_template_fields", f"row {i}")
            continue
        error = template_error(text)
        if error:
            stats.skip(f"invalid_template_{error}", f"row {i}")
            continue
        yield Template(
            template_id=str(values["template_id"]) if values["template_id"] is not None else template_id(text),
            template=text, compatible_document_description=description, variables=template_variables(text),
            query=str(values["query"] or ""), source=str(values["source"] or ""),
            popularity=int(row["popularity"]) if isinstance(row.get("popularity"), int) else 1,
        )
        made += 1
