"""One input file: its format and compression from its name, the checks that raise `InputError` before a row
is read, and the parser (or, for a named pipe or a device, the stream reader) that yields its rows."""

from __future__ import annotations

import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fineinstructions.io.compression import COMPRESSIONS, MAGIC, open_decompressed
from fineinstructions.io.formats import (
    SUPPORTED,
    UTF16_BOMS,
    json_file_rows,
    jsonl_rows,
    parquet_rows,
    text_file_rows,
)
from fineinstructions.io.read_stats import InputError, ReadStats
from fineinstructions.io.streams import stream_rows

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".html", ".htm"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def file_kind(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from a file's name; format is jsonl, json, parquet, text, or None (not input)."""
    suffix = path.suffix.lower()
    compression = COMPRESSIONS.get(suffix)
    if compression:
        suffix = Path(path.stem).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl", compression
    if suffix == ".json":
        return "json", compression
    if compression is None and suffix == ".parquet":
        return "parquet", None
    if compression is None and suffix in TEXT_SUFFIXES:
        return "text", None
    return None, compression


def open_file(path: Path, name: str, stats: ReadStats, without: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Check a file can be read (raising InputError if not) and return an iterator over its rows.

    `without` names Parquet columns left unread (the rows of other formats are parsed whole).
    """
    fmt, compression = file_kind(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):  # a named pipe or a device: opened once, read as a stream
        if fmt is None and compression is not None:  # without a suffix (e.g. /dev/fd/63) the format is sniffed
            raise InputError(f"unknown input format for {path}: use {SUPPORTED}")
        what = _special_kind(mode)
        if fmt == "parquet":
            raise InputError(f"{path} is {what}: Parquet needs a seekable file, copy it to a regular file first")
        try:
            handle = path.open("rb")
        except OSError as err:
            raise InputError(f"cannot read {path}: {err.strerror or err}") from err
        return stream_rows(handle, str(path), name, fmt, compression, what, stats)
    if fmt is None:
        raise InputError(f"unknown input format for {path}: use {SUPPORTED}")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    if not head:
        raise InputError(f"{path} is empty (0 bytes)")
    if compression and not head.startswith(MAGIC[compression]):
        raise InputError(f"{path} is named {path.suffix} but is not {compression}-compressed")
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for truncated or foreign files
            raise InputError(f"cannot read {path} as Parquet (truncated or not Parquet): {err}") from err
        return parquet_rows(parquet, name, stats, without)
    if not compression and head.startswith(UTF16_BOMS):
        raise InputError(f"{path} is UTF-16 encoded: save it as UTF-8")
    if fmt == "text":
        return text_file_rows(path, name, stats)
    if fmt == "json":
        return json_file_rows(path, name, compression, stats)
    return jsonl_rows(open_decompressed(path, compression), name, stats)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"
