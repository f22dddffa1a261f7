"""Read rows from JSONL, JSON, Parquet, text files, folders of these, stdin and Hugging Face datasets.

This is the front door: `read_rows` picks the reader for a source; `InputError` and `ReadStats` are what every
read reports. The readers themselves live beside it:

- `io.files`: one file (its format and compression from its name), `io.folders`: a folder of files,
  `io.streams`: stdin, a named pipe or a device, read once, `io.hub`: `hf:NAME` datasets;
- `io.formats`: the JSON Lines, JSON, Parquet and text parsers, `io.compression`: compressed files;
- `io.rows`: rows to Query, Document and Template records, and `read_typed`: any input to typed records.

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

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fineinstructions.io.files import open_file
from fineinstructions.io.folders import folder_input_files, folder_rows
from fineinstructions.io.formats import SUPPORTED
from fineinstructions.io.hub import hf_name_error, read_hub_dataset
from fineinstructions.io.read_stats import InputError, ReadStats
from fineinstructions.io.streams import stream_rows

__all__ = ["InputError", "ReadStats", "hf_name_error", "read_rows"]


def read_rows(source: str, split: str = "train", stats: ReadStats | None = None,
              hf_config: str | None = None, revision: str | None = None,
              data_files: str | list[str] | dict[str, Any] | None = None,
              without: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows of `source`: a .jsonl/.json file (optionally compressed), a .parquet file, a text file, a folder of
    these, `-` (stdin: JSON Lines or a JSON list, optionally compressed), or `hf:NAME` (a Hugging Face dataset
    by name or local path, streamed; `hf_config`, `revision` and `data_files` are passed to
    `datasets.load_dataset`).

    `without` names fields left out of every row; Parquet files do not even read those columns.

    Raises `InputError` at once (not when the rows are first pulled) when the input cannot be read at all.
    """
    stats = stats if stats is not None else ReadStats()
    rows = _rows(source, split, stats, hf_config, revision, data_files, tuple(without))
    return _leave_out(rows, frozenset(without)) if without else rows


def _rows(source: str, split: str, stats: ReadStats, hf_config: str | None, revision: str | None,
          data_files: str | list[str] | dict[str, Any] | None, without: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    if source.startswith("hf:"):
        return read_hub_dataset(source[3:], split, hf_config, stats, revision, data_files)
    if revision is not None or data_files is not None:
        raise InputError(f"`revision` and `data_files` apply to hf: sources only, not {source}")
    if source == "-":
        if sys.stdin is None:
            raise InputError("- reads stdin, but this process has no stdin")
        return stream_rows(sys.stdin.buffer, "stdin", "stdin", None, None, "a stream", stats, close=False)
    path = Path(source).expanduser()
    if not path.exists():
        hint = " (for a Hugging Face dataset use hf:NAME)" if not source.startswith(("/", ".", "~")) else ""
        raise InputError(f"input not found: {path}{hint}")
    if path.is_dir():
        files = folder_input_files(path, stats)
        if not files:
            ignored = f"; ignored: {dict(stats.ignored_files)}" if stats.ignored_files else ""
            raise InputError(f"{path} holds no input files ({SUPPORTED}){ignored}")
        return folder_rows(path, files, stats, without)
    return open_file(path, path.name, stats, without)


def _leave_out(rows: Iterator[dict[str, Any]], without: frozenset[str]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {k: v for k, v in row.items() if k not in without}
