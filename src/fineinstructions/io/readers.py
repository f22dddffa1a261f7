"""Read rows from JSONL, JSON, Parquet, folders of mixed files and Hugging Face datasets, and map them to records.

Bad input gets a clear error and loses nothing else:

- an input that cannot be read at all (missing, unreadable, empty, unknown format, corrupt, wrongly compressed)
  raises `InputError` when `read_rows` is called, before a single row is read;
- a malformed row is skipped and counted under a named reason in `ReadStats.skipped` (and logged), and the
  rows around it are kept in order;
- inside a folder, a file that cannot be read is skipped and counted (`unreadable_file`), and a file that is
  not input (hidden, zero bytes, another format) is counted in `ReadStats.ignored_files`. Hidden files include
  the temporary files of an interrupted atomic write, so a half-written file is never read as input.
  A named pipe, socket or device inside a folder is counted as ignored (`special_file`), never opened.

JSON nested deeper than `MAX_JSON_DEPTH` levels (Python's parser and the code downstream recurse once per
level) is skipped and counted as `json_too_deep`: a JSONL line or one element of a .json list, or a whole .json
file when its top value is not a list (e.g. `{"data": [...]}` nested too deep).

A named pipe, a character device (e.g. `/dev/fd/N` of a process substitution) and stdin (`-`) are read once as a
stream: the format is sniffed from the first bytes (gzip, bz2, xz, zstd by their magic bytes; then a JSON list
or JSON Lines), which are kept and read again from memory, never by reopening the input. Parquet needs a
seekable file and is refused from such an input with an `InputError`.

`tests/io/test_malformed_inputs.py` lists every kind of malformed input and its handling.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import os
import re
import stat
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from fineinstructions.io.run_folder import is_run_folder
from fineinstructions.records import Document, Query, Template

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".html", ".htm"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}  # for .jsonl and .json files
MAX_TEXT_FILE_BYTES = 50 * 1024 * 1024  # a larger text file is skipped (file_too_large)
MAX_LINE_BYTES = 50 * 1024 * 1024  # a longer JSONL line is skipped without being held in memory (line_too_long)
MAX_JSON_FILE_BYTES = 1024 * 1024 * 1024  # a .json file is parsed whole: larger ones must be JSONL
MAX_JSON_DEPTH = 200  # a JSON row nested deeper is skipped (json_too_deep); real data nests a few levels
SNIFF_BYTES = 4096  # bytes of a stream without a format suffix (stdin, a pipe) looked at to tell its format
LOGGED_PER_REASON = 5  # skips logged at WARNING per reason; the rest at DEBUG (the counts stay exact)

_MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape that may decode to a lone surrogate
_DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, pa.ArrowException)
_HF_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
SUPPORTED = ".jsonl/.ndjson, .json (optionally .gz/.bz2/.xz/.zst), .parquet, text files (.txt, .md, ...), " \
            "a folder of these, - (JSON Lines or a JSON list on stdin), or hf:NAME"
_JSON_STRUCTURE = re.compile(r'["\[\]{}]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # the rest of a JSON string after its quote
_TOO_DEEP = object()  # stands for an element of a JSON list nested too deep to parse


class InputError(ValueError):
    """An input that cannot be read at all (missing, unreadable, empty, unknown format, corrupt)."""


@dataclass
class ReadStats:
    """What a read produced: rows read, rows skipped by reason, and folder files that were not input."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ignored_files: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        """Count `count` rows lost for `reason`; log the first few of each reason at WARNING."""
        before = self.skipped[reason]
        self.skipped[reason] += count
        if before < LOGGED_PER_REASON:
            log.warning("skipped %s: %s%s", where, reason, f" ({count} rows)" if count != 1 else "")
            if before + 1 == LOGGED_PER_REASON:
                log.warning("further %s skips are logged at DEBUG level (all are counted)", reason)
        else:
            log.debug("skipped %s: %s", where, reason)

    def ignore(self, reason: str, where: str) -> None:
        """Count a file of a folder that is not input (hidden, zero bytes, another format)."""
        self.ignored_files[reason] += 1
        log.info("ignored %s: %s", where, reason)


def read_rows(source: str, split: str = "train", stats: ReadStats | None = None,
              hf_config: str | None = None, revision: str | None = None,
              data_files: str | list[str] | dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of `source`: a .jsonl/.json file (optionally compressed), a .parquet file, a text file, a folder of
    these, `-` (stdin: JSON Lines or a JSON list, optionally compressed), or `hf:NAME` (a Hugging Face dataset
    by name or local path, streamed; `hf_config`, `revision` and `data_files` are passed to
    `datasets.load_dataset`).

    Raises `InputError` at once (not when the rows are first pulled) when the input cannot be read at all.
    """
    stats = stats if stats is not None else ReadStats()
    if source.startswith("hf:"):
        return _read_hf(source[3:], split, hf_config, stats, revision, data_files)
    if revision is not None or data_files is not None:
        raise InputError(f"`revision` and `data_files` apply to hf: sources only, not {source}")
    if source == "-":
        if sys.stdin is None:
            raise InputError("- reads stdin, but this process has no stdin")
        return _stream_rows(sys.stdin.buffer, "stdin", "stdin", None, None, "a stream", stats, close=False)
    path = Path(source).expanduser()
    if not path.exists():
        hint = " (for a Hugging Face dataset use hf:NAME)" if not source.startswith(("/", ".", "~")) else ""
        raise InputError(f"input not found: {path}{hint}")
    if path.is_dir():
        files = _folder_files(path, stats)
        if not files:
            ignored = f"; ignored: {dict(stats.ignored_files)}" if stats.ignored_files else ""
            raise InputError(f"{path} holds no input files ({SUPPORTED}){ignored}")
        return _folder_rows(path, files, stats)
    return _open_file(path, path.name, stats)


# -- files ----------------------------------------------------------------------------------------------


def _file_kind(path: Path) -> tuple[str | None, str | None]:
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


def _open_file(path: Path, name: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Check a file can be read (raising InputError if not) and return an iterator over its rows."""
    fmt, compression = _file_kind(path)
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
        return _stream_rows(handle, str(path), name, fmt, compression, what, stats)
    if fmt is None:
        raise InputError(f"unknown input format for {path}: use {SUPPORTED}")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    if not head:
        raise InputError(f"{path} is empty (0 bytes)")
    if compression and not head.startswith(_MAGIC[compression]):
        raise InputError(f"{path} is named {path.suffix} but is not {compression}-compressed")
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for truncated or foreign files
            raise InputError(f"cannot read {path} as Parquet (truncated or not Parquet): {err}") from err
        return _parquet_rows(parquet, name, stats)
    if not compression and head.startswith(_UTF16_BOMS):
        raise InputError(f"{path} is UTF-16 encoded: save it as UTF-8")
    if fmt == "text":
        return _text_file_rows(path, name, stats)
    if fmt == "json":
        return _json_rows(path, name, compression, stats)
    return _jsonl_rows(_open_binary(path, compression), name, stats)


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


class _Rejoined(io.RawIOBase):
    """The bytes `head` already read from `stream`, then the rest of `stream`: a stream sniffed without seeking.

    Closing it closes `closes` (the layers below it that this reader owns).
    """

    def __init__(self, head: bytes, stream: IO[bytes], *closes: IO[bytes]) -> None:
        super().__init__()
        self._head, self._pos, self._stream, self._closes = head, 0, stream, closes
        self._read = getattr(stream, "read1", stream.read)  # what is there, without waiting for a full buffer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos < len(self._head):
            n = min(len(buffer), len(self._head) - self._pos)
            buffer[:n] = self._head[self._pos:self._pos + n]
            self._pos += n
            return n
        data = self._read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                for layer in self._closes:
                    layer.close()
            finally:
                super().close()


def _read_head(stream: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes from the start of `stream` (fewer only at its end), however a pipe delivers them."""
    head = b""
    while len(head) < size:
        more = stream.read(size - len(head))
        if not more:
            break
        head += more
    return head


def _stream_rows(raw: IO[bytes], label: str, name: str, fmt: str | None, compression: str | None, what: str,
                 stats: ReadStats, close: bool = True) -> Iterator[dict[str, Any]]:
    """Rows of an input that can be read only once (a named pipe, a device, stdin), opened as `raw`.

    Its compression (by magic bytes) and, when its name gives none (`fmt` None), its format (a JSON list or JSON
    Lines) are sniffed from its first bytes, which are then read again from memory: nothing is lost or reread.
    """
    owned = [raw] if close else []
    try:
        return _sniffed_rows(raw, label, name, fmt, compression, what, stats, owned)
    except BaseException:
        for layer in reversed(owned):
            layer.close()
        raise


def _sniffed_rows(raw: IO[bytes], label: str, name: str, fmt: str | None, compression: str | None, what: str,
                  stats: ReadStats, owned: list[IO[bytes]]) -> Iterator[dict[str, Any]]:
    try:
        head = _read_head(raw, 8)
    except OSError as err:
        raise InputError(f"cannot read {label}: {err.strerror or err}") from err
    if not head:
        raise InputError(f"{label} is empty (0 bytes)")
    magic = next((c for c, m in _MAGIC.items() if head.startswith(m)), None)
    if compression and magic != compression:
        raise InputError(f"{label} is named {Path(label).suffix} but is not {compression}-compressed")
    if fmt is None and head.startswith(b"PAR1"):
        raise InputError(f"{label} is {what} holding Parquet: Parquet needs a seekable file, pass a regular file")
    if fmt is None:
        compression = magic
    stream: IO[bytes] = io.BufferedReader(_Rejoined(head, raw, *owned))
    owned[:] = [stream]
    if compression:
        decompressed = _decompressor(stream, compression)
        owned[:] = [decompressed, stream]
        head = b""
        if fmt is None:
            try:
                head = _read_head(decompressed, SNIFF_BYTES)
            except _DECOMPRESSION_ERRORS as err:
                raise InputError(f"cannot decompress {label}: {err}") from err
            if not head:
                raise InputError(f"{label} is empty (nothing in its {compression} data)")
        stream = io.BufferedReader(_Rejoined(head, decompressed, decompressed, stream))
        owned[:] = [stream]
    elif fmt is None:
        head = _read_head(stream, SNIFF_BYTES)
        stream = io.BufferedReader(_Rejoined(head, stream, stream))
        owned[:] = [stream]
    if head.startswith(_UTF16_BOMS):
        raise InputError(f"{label} is UTF-16 encoded: save it as UTF-8")
    if fmt is None:
        start = head.removeprefix(_UTF8_BOM).lstrip()[:1]
        if start not in (b"[", b"{", b""):
            raise InputError(f"cannot tell the format of {label} ({what}): it does not start with a JSON object "
                             f"or list; give it a name ending in {SUPPORTED.split(' (')[0]}, or use a regular file")
        fmt = "json" if start == b"[" else "jsonl"
    if fmt == "text":
        return _text_stream_rows(stream, Path(name).stem, name, stats)
    if fmt == "json":
        return _json_stream_rows(stream, label, name, stats)
    return _jsonl_rows(stream, name, stats)


def _decompressor(stream: IO[bytes], compression: str) -> IO[bytes]:
    """A reader of `stream`'s decompressed bytes (closing it leaves `stream` open)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(stream, "rb")
    if compression == "xz":
        return lzma.LZMAFile(stream, "rb")
    return pa.CompressedInputStream(pa.PythonFile(stream, mode="r"), "zstd")  # type: ignore[return-value]


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(pa.input_stream(str(path), compression="zstd"))  # type: ignore[arg-type]
    return path.open("rb")


def _jsonl_rows(handle: IO[bytes], name: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """One object per line; bad lines are counted, overlong lines are skipped without being held whole."""
    with handle:
        lineno = 0
        while True:
            try:
                line = handle.readline(MAX_LINE_BYTES + 2)
                lineno += 1
                if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                    size = len(line)
                    while line and not line.endswith(b"\n"):
                        line = handle.readline(1 << 20)
                        size += len(line)
                    stats.skip("line_too_long", f"{name}:{lineno} ({size:,} bytes > {MAX_LINE_BYTES:,})")
                    continue
            except _DECOMPRESSION_ERRORS as err:
                stats.skip("truncated_compressed_file", f"{name} after line {lineno} ({err})")
                return
            if not line:
                return
            row = _parse_line(line, f"{name}:{lineno}", stats)
            if row is not None:
                stats.rows += 1
                yield row


def _parse_line(line: bytes, where: str, stats: ReadStats) -> dict[str, Any] | None:
    """The object on one JSONL line, or None (blank lines silently, bad lines counted)."""
    if line.startswith(_UTF8_BOM):  # the first line of a file saved with a BOM, or of files concatenated
        line = line[len(_UTF8_BOM):]
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
    if _SURROGATE_ESCAPE.search(line) and _bad_unicode(row):
        stats.skip("lone_surrogate", where)
        return None
    return row


def _json_rows(path: Path, name: str, compression: str | None, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """A JSON list of objects (or an object with a 'data'/'rows' list), parsed now so errors raise at once.

    A truncated list yields its complete objects and counts `truncated_json` once; JSON Lines in a .json file
    are read as JSON Lines. An element nested too deep is skipped (`json_too_deep`), the others are kept.
    """
    if compression is None and path.stat().st_size > MAX_JSON_FILE_BYTES:
        raise InputError(f"{path} is larger than {MAX_JSON_FILE_BYTES:,} bytes: a .json file is parsed whole, "
                         f"convert it to JSON Lines (.jsonl)")
    try:
        with _open_binary(path, compression) as handle:
            raw = handle.read(MAX_JSON_FILE_BYTES + 1)
    except _DECOMPRESSION_ERRORS as err:
        raise InputError(f"cannot decompress {path}: {err}") from err
    return _json_bytes_rows(raw, str(path), name, stats)


def _json_stream_rows(stream: IO[bytes], label: str, name: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """`_json_rows` for a stream (a named pipe, stdin), read to its end now."""
    try:
        with stream:
            raw = stream.read(MAX_JSON_FILE_BYTES + 1)
    except _DECOMPRESSION_ERRORS as err:
        raise InputError(f"cannot read or decompress {label}: {err}") from err
    return _json_bytes_rows(raw, label, name, stats)


def _json_bytes_rows(raw: bytes, label: str, name: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    if len(raw) > MAX_JSON_FILE_BYTES:
        raise InputError(f"{label} holds more than {MAX_JSON_FILE_BYTES:,} bytes of JSON: convert it to .jsonl")
    raw = raw.removeprefix(_UTF8_BOM)
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
            return _jsonl_rows(io.BytesIO(raw), name, stats)
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
                return _jsonl_rows(io.BytesIO(raw), name, stats)
            stats.skip("json_too_deep", f"{name} (the whole file: nested too deep to parse)")
            return iter(())
    rows = value.get("data", value.get("rows")) if isinstance(value, dict) else value
    if not isinstance(rows, list):
        found = f"an object with keys {sorted(value)[:8]}" if isinstance(value, dict) else _json_kind(value)
        raise InputError(f"{label}: expected a JSON list of objects (or an object with a 'data' or 'rows' list), "
                         f"found {found}")
    return _json_list_rows(rows, name, stats, truncated, check_unicode, bad_bytes)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _json_list_rows(rows: list[Any], name: str, stats: ReadStats, truncated: bool, check_unicode: bool,
                    bad_bytes: bool) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if row is _TOO_DEEP:
            stats.skip("json_too_deep", f"{name}[{i}] (nested too deep to parse)")
        elif not isinstance(row, dict):
            stats.skip("not_an_object", f"{name}[{i}] ({_json_kind(row)})")
        elif _deeper_than(row, MAX_JSON_DEPTH):
            stats.skip("json_too_deep", f"{name}[{i}] (nested more than {MAX_JSON_DEPTH} levels)")
        elif check_unicode and _bad_unicode(row):
            stats.skip("not_utf8" if bad_bytes else "lone_surrogate", f"{name}[{i}]")
        else:
            stats.rows += 1
            yield row
    if truncated:
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


def _parquet_rows(parquet: pq.ParquetFile, name: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file, row group by row group; a damaged row group is counted row by row and skipped."""
    for group in range(parquet.num_row_groups):
        expected, done = parquet.metadata.row_group(group).num_rows, 0
        try:
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group]):
                for row in batch.to_pylist():
                    done += 1
                    stats.rows += 1
                    yield row
        except (OSError, pa.ArrowException) as err:
            stats.skip("corrupt_row_group", f"{name} row group {group} ({err})", count=expected - done)


def _text_file_rows(path: Path, rel: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """One row for one text file (id: its path in the folder); binary, non-UTF-8 and huge files are counted."""
    if path.stat().st_size > MAX_TEXT_FILE_BYTES:
        stats.skip("file_too_large", rel)
        return
    yield from _text_rows(path.read_bytes(), path.stem, rel, stats)


def _text_stream_rows(stream: IO[bytes], title: str, rel: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """`_text_file_rows` for a stream (a named pipe): read to its end, at most MAX_TEXT_FILE_BYTES held."""
    with stream:
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


# -- folders ---------------------------------------------------------------------------------------------


def _folder_files(root: Path, stats: ReadStats) -> list[Path]:
    """Input files under `root` in path order. Hidden, empty and foreign files are counted as ignored; the
    `rejects/` folders of stage outputs (and `stats/` beside `shard-N.parquet` files) and run folders below
    `root` are not input.

    A folder of text files is a corpus (one document a file); beside data files (.jsonl, .json, .parquet) text
    files are a README and the like, so they are counted as ignored (`text_beside_data`), not read.
    """
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()  # folders already walked: symlink loops end here

    def walk(folder: Path, top: bool) -> None:
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            if top:
                raise InputError(f"cannot read folder {folder}: {err.strerror or err}") from err
            stats.skip("unreadable_folder", f"{folder} ({err.strerror or err})")
            return
        stage_output = any(e.name.startswith("shard-") and e.name.endswith(".parquet") for e in entries)
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if entry.name.startswith("."):
                stats.ignore("hidden", rel)
                continue
            if _is_dir(entry):
                if entry.name == "rejects":
                    stats.ignore("stage_rejects", rel)  # a stage's dropped rows, not input
                elif is_run_folder(path):
                    stats.ignore("run_folder", rel)  # a run's outputs inside its inputs would feed the run itself
                elif stage_output and entry.name == "stats":
                    stats.ignore("stage_stats", rel)
                else:
                    walk(path, False)
                continue
            if _file_kind(path)[0] is None:
                stats.ignore("unsupported_format", rel)
                continue
            try:
                st = entry.stat()
            except OSError as err:  # e.g. a dangling symlink
                stats.skip("unreadable_file", f"{rel} ({err.strerror or err})")
                continue
            if not stat.S_ISREG(st.st_mode):  # a named pipe would block the walk (or lose data): not input
                stats.ignore("special_file", rel)
            elif st.st_size == 0:
                stats.ignore("empty_file", rel)
            else:
                files.append(path)

    walk(root, True)
    if any(_file_kind(f)[0] != "text" for f in files):
        for text_file in (f for f in files if _file_kind(f)[0] == "text"):
            stats.ignore("text_beside_data", text_file.relative_to(root).as_posix())
        files = [f for f in files if _file_kind(f)[0] != "text"]
    return files


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; a loop is caught by the walk
    except OSError:
        return False


def _folder_rows(root: Path, files: list[Path], stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Rows of every file in turn; a file that cannot be read is counted (unreadable_file) and skipped."""
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            yield from _open_file(path, rel, stats)
        except (InputError, OSError) as err:
            stats.skip("unreadable_file", str(err) if isinstance(err, InputError) else f"{rel} ({err})")


# -- Hugging Face ----------------------------------------------------------------------------------------


def hf_name_error(name: str, check_path: bool = True) -> str | None:
    """Why `name` (after `hf:`) cannot name a Hugging Face dataset, or None.

    A name is `owner/name` (or `name`) on the Hub, or a local folder path (with `check_path`, it must exist).
    """
    if not name.strip():
        return "hf: needs a dataset name, e.g. hf:HuggingFaceFW/fineweb or hf:/path/to/dataset_folder"
    path_like = name.startswith(("/", ".", "~")) or name.count("/") >= 2
    if not path_like and _HF_NAME.fullmatch(name):
        return None
    if path_like and not check_path:
        return None
    if path_like and Path(name).expanduser().exists():
        return None
    if path_like:
        return f"no local Hugging Face dataset folder {name} (hf:NAME takes a Hub name owner/name or a folder)"
    return f"{name!r} is not a Hugging Face dataset name (owner/name: letters, digits, '-', '_', '.')"


def _read_hf(name: str, split: str, config: str | None, stats: ReadStats, revision: str | None = None,
             data_files: str | list[str] | dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Stream a Hugging Face dataset by hub name (online) or local path (offline).

    A local folder has no revisions: `revision` applies to Hub names only and is ignored for a folder.
    """
    error = hf_name_error(name)
    if error:
        raise InputError(error)
    import datasets

    local = Path(name).expanduser().exists()
    options: dict[str, Any] = {"streaming": True}
    if revision is not None and not local:
        options["revision"] = revision
    if data_files is not None:
        options["data_files"] = data_files
    pinned = f" at revision {revision}" if "revision" in options else ""
    try:
        dataset = datasets.load_dataset(name, config, split=split, **options)
    except Exception as err:  # datasets raises many types (missing, offline, bad config)
        raise InputError(f"cannot load Hugging Face dataset {name!r}{pinned} (split {split!r}): {err}") from err
    return _hf_rows(dataset, name, stats)


def _hf_rows(dataset: Iterable[dict[str, Any]], name: str, stats: ReadStats) -> Iterator[dict[str, Any]]:
    read = 0
    try:
        for row in dataset:
            read += 1
            stats.rows += 1
            yield dict(row)
    except Exception as err:  # a remote shard that breaks mid-stream: a clear error, not a library trace
        raise InputError(f"reading Hugging Face dataset {name!r} failed after {read} rows: {err}") from err


# -- rows to records -------------------------------------------------------------------------------------


def _field(row: dict[str, Any], name: str) -> Any:
    """A possibly nested field: "meta.url" reads row["meta"]["url"]."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _bad_unicode(value: Any) -> bool:
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


def _string_problem(text: str) -> str | None:
    """Why a string cannot go into a record (NUL characters, lone surrogates), or None."""
    if "\x00" in text:
        return "nul_in_text"
    if _bad_unicode(text):
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


def rows_to_records(rows: Iterable[dict[str, Any]], kind: type[Query] | type[Document], text_field: str = "text",
                    id_field: str | None = None, title_field: str | None = None, source: str = "",
                    stats: ReadStats | None = None, limit: int | None = None) -> Iterator[Query | Document]:
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
        if reason:
            stats.skip(reason, f"row {i}{_fields_hint(row) if reason.startswith('missing_') else ''}")
            continue
        raw_id = _field(row, id_field) if id_field else row.get("id", row.get("document_id", row.get("query_id")))
        record_id = _record_id(raw_id) if raw_id is not None else f"{source or 'row'}-{i}"
        if record_id is None:
            stats.skip("invalid_id", f"row {i} (id {str(raw_id)[:40]!r} of type {type(raw_id).__name__})")
            continue
        if not seen.add(record_id):
            stats.skip("duplicate_id", f"row {i} (id {record_id[:80]!r})")
            continue
        if kind is Query:
            yield Query(query_id=record_id, text=text, source=source)  # type: ignore[arg-type]
        else:
            title = _field(row, title_field) if title_field else row.get("title", "")
            yield Document(document_id=record_id, text=text, title=_title(title), source=source)  # type: ignore[arg-type]
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
            stats.skip("missing_template_fields", f"row {i}{_fields_hint(row)}")
            continue
        problem = next((p for v in values.values() if isinstance(v, str) and (p := _string_problem(v))), None)
        error = template_error(text) or (None if description.strip() else "empty_description")
        raw_id = values["template_id"]
        given_id = _record_id(raw_id) if raw_id is not None else None
        if problem:
            stats.skip(problem, f"row {i}")
        elif error:
            stats.skip(f"invalid_template_{error}", f"row {i} ({text[:80]!r})")
        elif raw_id is not None and given_id is None:
            stats.skip("invalid_template_id", f"row {i} (id {str(raw_id)[:40]!r})")
        elif given_id is not None and not seen.add(given_id):
            stats.skip("duplicate_template_id", f"row {i} (id {given_id[:80]!r})")
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
