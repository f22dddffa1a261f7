"""Parsers of each input format: JSON Lines, a JSON list, Parquet and plain text, each yielding row dicts.

A malformed row is skipped and counted in `ReadStats` under a named reason; the rows around it are kept.
JSON nested deeper than `MAX_JSON_DEPTH` levels is skipped (`json_too_deep`) without a RecursionError.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from fineinstructions.io.compression import DECOMPRESSION_ERRORS, open_decompressed
from fineinstructions.io.read_stats import InputError, ReadStats, Share, log

MAX_TEXT_FILE_BYTES = 50 * 1024 * 1024  # a larger text file is skipped (file_too_large)
MAX_LINE_BYTES = 50 * 1024 * 1024  # a longer JSONL line is skipped without being held in memory (line_too_long)
MAX_JSON_FILE_BYTES = 1024 * 1024 * 1024  # a .json file is parsed whole: larger ones must be JSONL
MAX_JSON_DEPTH = 200  # a JSON row nested deeper is skipped (json_too_deep); real data nests a few levels
SUPPORTED = ".jsonl/.ndjson, .json (optionally .gz/.bz2/.xz/.zst), .parquet, text files (.txt, .md, ...), " \
            "a folder of these, - (JSON Lines or a JSON list on stdin), or hf:NAME"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape that may decode to a lone surrogate
_JSON_STRUCTURE = re.compile(r'["\[\]{}]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # the rest of a JSON string after its quote
_TOO_DEEP = object()  # stands for an element of a JSON list nested too deep to parse


def jsonl_rows(handle: IO[bytes], name: str, stats: ReadStats, share: Share | None = None,
               byte_range: tuple[int, int] | None = None) -> Iterator[dict[str, Any]]:
    """One object per line; bad lines are counted, overlong lines are skipped without being held whole.

    With `share`, only the lines this rank owns are parsed (every line is numbered, blank and bad ones too).
    With `byte_range` (start, end) of a seekable plain file, only the lines starting in [start, end) are read.
    """
    with handle:
        lineno, pos, end = 0, 0, None
        if byte_range is not None:
            pos, end = _line_start(handle, byte_range[0]), byte_range[1]
        numbered = pos == 0  # a rank starting inside the file does not know its line numbers
        while True:
            if end is not None and pos >= end:
                return
            owned: bool | None = None
            try:
                line = handle.readline(MAX_LINE_BYTES + 2)
                if not line:
                    return
                lineno += 1
                owned = share is None or share.owns_row()
                where = f"{name}:{lineno}" if numbered else f"{name} (line at byte {pos:,})"
                pos += len(line)
                if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                    size = len(line)
                    while line and not line.endswith(b"\n"):
                        line = handle.readline(1 << 20)
                        size += len(line)
                        pos += len(line)
                    if owned:
                        stats.skip("line_too_long", f"{where} ({size:,} bytes > {MAX_LINE_BYTES:,})")
                    continue
            except DECOMPRESSION_ERRORS as err:
                if owned is None:
                    owned = share is None or share.owns_row()
                if owned:
                    stats.skip("truncated_compressed_file", f"{name} after line {lineno} ({err})")
                return
            if not owned:
                continue
            row = _parse_line(line, where, stats)
            if row is not None:
                stats.rows += 1
                yield row


def _line_start(handle: IO[bytes], start: int) -> int:
    """Seek `handle` to the first line starting at or after byte `start`; return its position."""
    if start == 0:
        return 0
    handle.seek(start - 1)
    pos = start - 1
    while True:  # the rest of the line holding byte start - 1, read in pieces (it may be huge)
        piece = handle.readline(1 << 20)
        pos += len(piece)
        if not piece or piece.endswith(b"\n"):
            return pos


def _parse_line(line: bytes, where: str, stats: ReadStats) -> dict[str, Any] | None:
    """The object on one JSONL line, or None (blank lines silently, bad lines counted)."""
    if line.startswith(UTF8_BOM):  # the first line of a file saved with a BOM, or of files concatenated
        line = line[len(UTF8_BOM):]
    if not line.strip():
        return None
    if b"\x00" in line:
        stats.skip("nul_bytes", where)
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        stats.skip("not_utf8", f"{where} (byte {err.start})")
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        # Only the last line of a file can lack its newline: one that does not parse was cut off.
        reason = "malformed_json" if line.endswith(b"\n") else "truncated_last_line"
        stats.skip(reason, f"{where} ({err.msg}, column {err.colno})")
        return None
    except RecursionError:  # nested thousands of levels: too deep for the parser
        stats.skip("json_too_deep", f"{where} (nested too deep to parse)")
        return None
    if not isinstance(row, dict):
        stats.skip("not_an_object", f"{where} ({_json_kind(row)})")
        return None
    if line.count(b"[") + line.count(b"{") > MAX_JSON_DEPTH and _deeper_than(row, MAX_JSON_DEPTH):
        stats.skip("json_too_deep", f"{where} (nested more than {MAX_JSON_DEPTH} levels)")
        return None
    if _SURROGATE_ESCAPE.search(line) and has_lone_surrogate(row):
        stats.skip("lone_surrogate", where)
        return None
    return row


def json_file_rows(path: Path, name: str, compression: str | None, stats: ReadStats,
                   share: Share | None = None) -> Iterator[dict[str, Any]]:
    """A JSON list of objects (or an object with a 'data'/'rows' list), parsed now so errors raise at once.

    A truncated list yields its complete objects and counts `truncated_json` once; JSON Lines in a .json file
    are read as JSON Lines. An element nested too deep is skipped (`json_too_deep`), the others are kept.
    With `share`, each element (and a truncated end) is numbered as a row and only this rank's are kept.
    """
    if compression is None and path.stat().st_size > MAX_JSON_FILE_BYTES:
        raise InputError(f"{path} is larger than {MAX_JSON_FILE_BYTES:,} bytes: a .json file is parsed whole, "
                         f"convert it to JSON Lines (.jsonl)")
    try:
        with open_decompressed(path, compression) as handle:
            raw = handle.read(MAX_JSON_FILE_BYTES + 1)
    except DECOMPRESSION_ERRORS as err:
        raise InputError(f"cannot decompress {path}: {err}") from err
    return _json_bytes_rows(raw, str(path), name, stats, share)


def json_stream_rows(stream: IO[bytes], label: str, name: str, stats: ReadStats,
                     share: Share | None = None) -> Iterator[dict[str, Any]]:
    """`json_file_rows` for a stream (a named pipe, stdin), read to its end now."""
    try:
        with stream:
            raw = stream.read(MAX_JSON_FILE_BYTES + 1)
    except DECOMPRESSION_ERRORS as err:
        raise InputError(f"cannot read or decompress {label}: {err}") from err
    return _json_bytes_rows(raw, label, name, stats, share)


def _json_bytes_rows(raw: bytes, label: str, name: str, stats: ReadStats,
                     share: Share | None) -> Iterator[dict[str, Any]]:
    if len(raw) > MAX_JSON_FILE_BYTES:
        raise InputError(f"{label} holds more than {MAX_JSON_FILE_BYTES:,} bytes of JSON: convert it to .jsonl")
    raw = raw.removeprefix(UTF8_BOM)
    bad_bytes = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        bad_bytes = True  # keep the file: only the rows holding the bad bytes are skipped (not_utf8)
        text = raw.decode("utf-8", "surrogateescape")
    check_unicode = bad_bytes or bool(_SURROGATE_ESCAPE.search(raw))
    if not text.strip():
        raise InputError(f"{label} holds no JSON (only whitespace)")
    truncated = False
    start = text.lstrip()[:1]
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as err:
        if start == "[" and not text.rstrip().endswith("]"):
            value, _, _ = _json_array_items(text)
            truncated = True
        elif start == "{" and err.msg == "Extra data":
            log.warning("%s holds JSON Lines, not one JSON value: reading it line by line", label)
            return jsonl_rows(io.BytesIO(raw), name, stats, share)
        else:
            raise InputError(f"cannot parse {label} as JSON: {err.msg} at line {err.lineno}, "
                             f"column {err.colno}") from err
    except RecursionError:  # one value nested too deep: parse the list element by element, skipping it
        if start == "[":
            value, error, closed = _json_array_items(text)
            if error is not None and text.rstrip().endswith("]"):
                raise InputError(f"cannot parse {label} as JSON: {error.msg} at line {error.lineno}, "
                                 f"column {error.colno}") from error
            truncated = not closed
        else:
            first_end = _json_value_end(text, len(text) - len(text.lstrip()))
            if start == "{" and first_end is not None and text[first_end:].strip():
                log.warning("%s holds JSON Lines, not one JSON value: reading it line by line", label)
                return jsonl_rows(io.BytesIO(raw), name, stats, share)
            if share is None or share.owns_row():
                stats.skip("json_too_deep", f"{name} (the whole file: nested too deep to parse)")
            return iter(())
    rows = value.get("data", value.get("rows")) if isinstance(value, dict) else value
    if not isinstance(rows, list):
        found = f"an object with keys {sorted(value)[:8]}" if isinstance(value, dict) else _json_kind(value)
        raise InputError(f"{label}: expected a JSON list of objects (or an object with a 'data' or 'rows' list), "
                         f"found {found}")
    return _json_list_rows(rows, name, stats, truncated, check_unicode, bad_bytes, share)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _json_list_rows(rows: list[Any], name: str, stats: ReadStats, truncated: bool, check_unicode: bool,
                    bad_bytes: bool, share: Share | None) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if share is not None and not share.owns_row():
            continue
        if row is _TOO_DEEP:
            stats.skip("json_too_deep", f"{name}[{i}] (nested too deep to parse)")
        elif not isinstance(row, dict):
            stats.skip("not_an_object", f"{name}[{i}] ({_json_kind(row)})")
        elif _deeper_than(row, MAX_JSON_DEPTH):
            stats.skip("json_too_deep", f"{name}[{i}] (nested more than {MAX_JSON_DEPTH} levels)")
        elif check_unicode and has_lone_surrogate(row):
            stats.skip("not_utf8" if bad_bytes else "lone_surrogate", f"{name}[{i}]")
        else:
            stats.rows += 1
            yield row
    if truncated and (share is None or share.owns_row()):
        stats.skip("truncated_json", f"{name} (cut off after {len(rows)} complete values)")


def _json_array_items(text: str) -> tuple[list[Any], json.JSONDecodeError | None, bool]:
    """The values of the JSON list in `text` parsed one at a time: (values, first syntax error, closed).

    Parsing stops at the first syntax error or where the text is cut off (`closed` is False then). A value
    nested too deep for the parser is skipped over and stands as `_TOO_DEEP` in the values.
    """
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, n = text.index("[") + 1, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            return values, None, False
        if text[pos] == "]":
            return values, None, True
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            return values, err, False
        except RecursionError:
            end = _json_value_end(text, pos)
            if end is None:
                return values, None, False
            value, pos = _TOO_DEEP, end
        values.append(value)


def _json_value_end(text: str, pos: int) -> int | None:
    """Where the JSON list or object starting at `pos` ends (brackets counted, strings stepped over, no
    recursion), or None when the text ends first."""
    depth = 0
    while True:
        match = _JSON_STRUCTURE.search(text, pos)
        if match is None:
            return None
        char, pos = match.group(), match.end()
        if char == '"':
            rest = _JSON_STRING_REST.match(text, pos)
            if rest is None:
                return None
            pos = rest.end()
        elif char in "[{":
            depth += 1
        else:
            depth -= 1
            if depth <= 0:
                return pos


def _deeper_than(value: Any, limit: int) -> bool:
    """True when lists and objects nest more than `limit` levels in `value` (itself level 1); no recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def has_lone_surrogate(value: Any) -> bool:
    """True when a string anywhere in `value` cannot be written as UTF-8 (a lone surrogate); no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parquet_rows(parquet: pq.ParquetFile, name: str, stats: ReadStats, without: Sequence[str] = (),
                 columns: Sequence[str] | None = None, share: Share | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file, row group by row group; a damaged row group is counted row by row and skipped.

    Only the columns named in `columns` (all when None; names the file lacks are left out) and not in `without`
    are read, batch by batch. With `share`, only this rank's row groups are read.
    """
    try:
        wanted = parquet_columns(parquet.schema_arrow.names, without, columns)
        for group in range(parquet.num_row_groups):
            if share is not None and not share.owns_group():
                continue
            expected, done = parquet.metadata.row_group(group).num_rows, 0
            try:
                for batch in parquet.iter_batches(batch_size=1024, row_groups=[group], columns=wanted):
                    for row in batch.to_pylist():
                        done += 1
                        stats.rows += 1
                        yield row
            except (OSError, pa.ArrowException) as err:
                stats.skip("corrupt_row_group", f"{name} row group {group} ({err})", count=expected - done)
    finally:
        parquet.close()


def parquet_columns(names: Sequence[str], without: Sequence[str] = (),
                    columns: Sequence[str] | None = None) -> list[str] | None:
    """The columns of a file with these column `names` to read (None: all of them)."""
    if not without and columns is None:
        return None
    keep = None if columns is None else set(columns)
    return [c for c in names if c not in without and (keep is None or c in keep)]


def text_file_rows(path: Path, rel: str, stats: ReadStats, share: Share | None = None) -> Iterator[dict[str, Any]]:
    """One row for one text file (id: its path in the folder); binary, non-UTF-8 and huge files are counted.

    With `share`, the file is one numbered row: read only by the rank that owns it."""
    if share is not None and not share.owns_row():
        return
    if path.stat().st_size > MAX_TEXT_FILE_BYTES:
        stats.skip("file_too_large", rel)
        return
    yield from _text_rows(path.read_bytes(), path.stem, rel, stats)


def text_stream_rows(stream: IO[bytes], title: str, rel: str, stats: ReadStats,
                     share: Share | None = None) -> Iterator[dict[str, Any]]:
    """`text_file_rows` for a stream (a named pipe): read to its end, at most MAX_TEXT_FILE_BYTES held."""
    with stream:
        if share is not None and not share.owns_row():
            return
        raw = stream.read(MAX_TEXT_FILE_BYTES + 1)
        if len(raw) > MAX_TEXT_FILE_BYTES:
            stats.skip("file_too_large", rel)
            return
    yield from _text_rows(raw, title, rel, stats)


def _text_rows(raw: bytes, title: str, rel: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    if b"\x00" in raw[:4096]:
        stats.skip("binary_file", rel)
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        stats.skip("not_utf8", rel)
        return
    stats.rows += 1
    yield {"id": rel, "text": text.replace("\r\n", "\n").replace("\r", "\n"), "title": title}
