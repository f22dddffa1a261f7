"""One input file, local or at a remote URL: its format and compression from its name, the checks that raise
`InputError` before a row is read, and the parser (or, for a named pipe or a device, the stream reader) that
yields its rows. A remote file is read through fsspec: Parquet through pyarrow with the fsspec file system,
the other formats from fsspec's file object (decompressed as a local file is)."""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import IO, Any

import pyarrow.parquet as pq

from fineinstructions.io import remote
from fineinstructions.io.compression import COMPRESSIONS, MAGIC, open_decompressed, owned_decompressed
from fineinstructions.io.formats import (
    MAX_JSON_FILE_BYTES,
    MAX_TEXT_FILE_BYTES,
    SUPPORTED,
    UTF16_BOMS,
    json_file_rows,
    json_stream_rows,
    jsonl_rows,
    parquet_rows,
    text_file_rows,
    text_stream_rows,
)
from fineinstructions.io.read_stats import InputError, ReadStats, Share
from fineinstructions.io.streams import stream_rows

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".html", ".htm"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
REMOTE_BUFFER_BYTES = 1 << 20  # a remote file is read in pieces of this size


def file_kind(path: PurePath) -> tuple[str | None, str | None]:
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


def open_file(path: Path, name: str, stats: ReadStats, without: Sequence[str] = (),
              columns: Sequence[str] | None = None, share: Share | None = None) -> Iterator[dict[str, Any]]:
    """Check a file can be read (raising InputError if not) and return an iterator over its rows.

    `without` names Parquet columns left unread and `columns` the only ones read (the rows of other formats are
    parsed whole). With `share`, only this rank's part is read: a Parquet file's row groups, a plain JSON Lines
    file's byte range, the numbered rows of any other file (see `Share`).
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
        return stream_rows(handle, str(path), name, fmt, compression, what, stats, share=share)
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
        return parquet_rows(parquet, name, stats, without, columns, share)
    if not compression and head.startswith(UTF16_BOMS):
        raise InputError(f"{path} is UTF-16 encoded: save it as UTF-8")
    if fmt == "text":
        return text_file_rows(path, name, stats, share)
    if fmt == "json":
        return json_file_rows(path, name, compression, stats, share)
    if share is not None and compression is None:
        return jsonl_rows(path.open("rb"), name, stats, byte_range=share.byte_range(path.stat().st_size))
    return jsonl_rows(open_decompressed(path, compression), name, stats, share)


def open_remote_file(url: str, name: str, stats: ReadStats, without: Sequence[str] = (),
                     columns: Sequence[str] | None = None, share: Share | None = None,
                     size: int | None = None) -> Iterator[dict[str, Any]]:
    """`open_file` for a file at a remote URL (any fsspec protocol); `size` is its size when already listed."""
    fs, inner = remote.filesystem(url)
    fmt, compression = file_kind(PurePosixPath(inner))
    if size is None:
        fs, inner, kind, size = remote.info(url)
        if kind == "directory":
            raise InputError(f"{url} is a folder (prefix), not a file")
    if fmt is None:
        raise InputError(f"unknown input format for {url}: use {SUPPORTED}")
    if size == 0:
        raise InputError(f"{url} is empty (0 bytes)")
    with remote.remote_errors(url), fs.open(inner, "rb") as handle:
        head = handle.read(8)
    if compression and not head.startswith(MAGIC[compression]):
        raise InputError(f"{url} is named {PurePosixPath(inner).suffix} but is not {compression}-compressed")
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(inner, filesystem=fs)
        except Exception as err:  # pyarrow and the store's client raise several types
            raise InputError(f"cannot read {url} as Parquet (truncated, not Parquet or unreachable): {err}") from err
        return parquet_rows(parquet, name, stats, without, columns, share)
    if not compression and head.startswith(UTF16_BOMS):
        raise InputError(f"{url} is UTF-16 encoded: save it as UTF-8")
    if fmt == "text" and size > MAX_TEXT_FILE_BYTES:
        return _skipped("file_too_large", name, stats, share)
    if fmt == "json" and compression is None and size > MAX_JSON_FILE_BYTES:
        raise InputError(f"{url} is larger than {MAX_JSON_FILE_BYTES:,} bytes: a .json file is parsed whole, "
                         f"convert it to JSON Lines (.jsonl)")
    with remote.remote_errors(url):  # buffered: fsspec's files lack readline(limit), which bounds long lines
        raw: IO[bytes] = io.BufferedReader(fs.open(inner, "rb"), buffer_size=REMOTE_BUFFER_BYTES)
    if fmt == "text":
        return text_stream_rows(raw, PurePosixPath(inner).stem, name, stats, share)
    if share is not None and fmt == "jsonl" and compression is None:
        return jsonl_rows(raw, name, stats, byte_range=share.byte_range(size))
    stream = owned_decompressed(raw, compression)
    if fmt == "json":
        return json_stream_rows(stream, url, name, stats, share)
    return jsonl_rows(stream, name, stats, share)


def _skipped(reason: str, name: str, stats: ReadStats, share: Share | None) -> Iterator[dict[str, Any]]:
    """No rows: a file that is one row, skipped for `reason` (by the rank that owns that row)."""
    if share is None or share.owns_row():
        stats.skip(reason, name)
    yield from ()


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
