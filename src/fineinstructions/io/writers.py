"""Parquet output: every file is written to a temporary name and renamed, never left half-written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fineinstructions.io.atomic import atomic_path
from fineinstructions.records import Record


def write_records(path: str | Path, records: Sequence[Record], record_type: type[Record]) -> Path:
    """Write records with their Arrow schema as one Parquet file, atomically."""
    path = Path(path)
    table = record_type.to_table(records)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write free-form rows (e.g. rejected records with their reason) as Parquet, atomically.

    Nested values are stored as JSON strings so rows of different shapes fit one schema.
    """
    path = Path(path)
    flat = [{k: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str)
             for k, v in row.items()} for row in rows]
    keys = sorted({k for row in flat for k in row})
    columns = {k: [_as_text(row.get(k)) for row in flat] for k in keys}
    table = pa.table(columns) if columns else pa.table({"reason": pa.array([], pa.string())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


def read_records(path: str | Path, record_type: type[Record], without: Sequence[str] = ()) -> list[Record]:
    """All records of a Parquet file, or of a folder's Parquet files and those of its `rank-R/` subfolders
    (sorted by path: a run's `dataset/rank-R/part-N.parquet` or `work/<stage>/rank-R/shard-N.parquet` in the
    order the run produced them).

    `without` names text columns left unread (they come back as ""), e.g. the document text of pairs
    when only their counts and scores are needed.
    """
    path = Path(path)
    files = sorted([*path.glob("*.parquet"), *path.glob("rank-*/*.parquet")]) if path.is_dir() else [path]
    columns = [name for name in record_type.arrow_schema().names if name not in without] if without else None
    blank = dict.fromkeys(without, "")
    out: list[Record] = []
    for file in files:
        table = pq.read_table(file, columns=columns)
        if without:
            out.extend(record_type.model_validate(row | blank) for row in table.to_pylist())
        else:
            out.extend(record_type.from_table(table))
    return out
