"""Read rows from JSONL, JSON, Parquet, text files, folders of these (local or at any fsspec URL: s3://, gs://,
hf://...), stdin and Hugging Face datasets.

This is the front door: `read_rows` picks the reader for a source; `InputError` and `ReadStats` are what every
read reports. The readers themselves live beside it:

- `io.files`: one file (its format and compression from its name), `io.folders`: a folder of files (or a
  remote prefix), `io.streams`: stdin, a named pipe or a device, read once, `io.hub`: `hf:NAME` datasets,
  `io.remote`: fsspec URLs (listing, opening, `upload`; its docstring says how to point it at an endpoint);
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

A remote input (`s3://bucket/key.jsonl.gz`, `s3://bucket/prefix/`, `hf://datasets/owner/name/data/`, any
fsspec protocol) is read like a local one: a single file, or a prefix listed and filtered by the folder rules.
Its failures (missing object, no credentials, unreachable endpoint) are `InputError`s too.

`tests/io/test_malformed_inputs.py` lists every kind of malformed input and its handling.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fineinstructions.io import remote
from fineinstructions.io.files import open_file, open_remote_file
from fineinstructions.io.folders import folder_input_files, folder_rows, remote_folder_files, remote_folder_rows
from fineinstructions.io.formats import SUPPORTED
from fineinstructions.io.hub import hf_name_error, read_hub_dataset
from fineinstructions.io.read_stats import InputError, ReadStats, Share
from fineinstructions.io.streams import stream_rows

__all__ = ["InputError", "ReadStats", "hf_name_error", "read_rows"]


def read_rows(source: str, split: str = "train", stats: ReadStats | None = None,
              hf_config: str | None = None, revision: str | None = None,
              data_files: str | list[str] | dict[str, Any] | None = None,
              without: Sequence[str] = (), columns: Sequence[str] | None = None,
              part: tuple[int, int] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of `source`: a .jsonl/.json file (optionally compressed), a .parquet file, a text file, a folder of
    these, the same at an fsspec URL (`s3://bucket/file.parquet`, `s3://bucket/prefix/`, `hf://datasets/...`),
    `-` (stdin: JSON Lines or a JSON list, optionally compressed), or `hf:NAME` (a Hugging Face dataset by name
    or local path, streamed; `hf_config`, `revision` and `data_files` are passed to `datasets.load_dataset`).

    `columns` names the only fields kept and `without` fields left out of every row; Parquet files read only
    the columns kept (batch by batch), other formats drop the others after parsing. A name a file lacks is
    simply absent from its rows.

    `part` = (rank, ranks) reads only rank's share of the rows: over ranks 0..ranks-1 every row is read once,
    and each rank reads its rows in a fixed order.

    - A folder or remote prefix with at least `ranks` input files: file i (in the folder's path order) goes
      whole to rank i % ranks.
    - Otherwise (fewer files, or a single file, `-` or `hf:`) every rank reads its share of each file:
      Parquet row groups are numbered across the Parquet files, group j goes to rank j % ranks; a plain
      (uncompressed) JSON Lines file is split into byte ranges, rank r reads the lines starting in
      [r*size/ranks, (r+1)*size/ranks); any other input (compressed JSON Lines, a .json list, a text file as
      one row, stdin, an `hf:` stream) is read whole by every rank and its rows, numbered across these inputs
      (blank and malformed lines included), go to rank i % ranks.
    - `ReadStats` count per rank: a malformed row (or row group) is counted by the rank that owns it, a file
      of a folder that cannot be read by the rank that owns it (file i: rank i % ranks), and the files a
      folder ignores by rank 0, so the ranks' counts add up to those of the whole read. An input that cannot
      be read at all raises on every rank.

    Raises `InputError` at once (not when the rows are first pulled) when the input cannot be read at all.
    """
    stats = stats if stats is not None else ReadStats()
    if part is not None:
        _check_part(part)
    rows = _rows(source, split, stats, hf_config, revision, data_files, tuple(without),
                 None if columns is None else tuple(columns), part)
    if not without and columns is None:
        return rows
    return _project(rows, frozenset(without), None if columns is None else frozenset(columns))


def _check_part(part: tuple[int, int]) -> None:
    if not (isinstance(part, tuple) and len(part) == 2 and all(isinstance(n, int) for n in part)):
        raise InputError(f"part must be (rank, ranks), two integers, not {part!r}")
    rank, ranks = part
    if ranks < 1 or not 0 <= rank < ranks:
        raise InputError(f"part (rank, ranks) needs ranks >= 1 and 0 <= rank < ranks, not {part!r}")


def _rows(source: str, split: str, stats: ReadStats, hf_config: str | None, revision: str | None,
          data_files: str | list[str] | dict[str, Any] | None, without: tuple[str, ...],
          columns: tuple[str, ...] | None, part: tuple[int, int] | None) -> Iterator[dict[str, Any]]:
    share = Share(*part) if part is not None else None  # a single input: every rank reads its share
    if source.startswith("hf:") and not source.startswith("hf://"):
        return read_hub_dataset(source[3:], split, hf_config, stats, revision, data_files, share)
    if revision is not None or data_files is not None:
        raise InputError(f"`revision` and `data_files` apply to hf: sources only, not {source}")
    if source == "-":
        if sys.stdin is None:
            raise InputError("- reads stdin, but this process has no stdin")
        return stream_rows(sys.stdin.buffer, "stdin", "stdin", None, None, "a stream", stats, close=False,
                           share=share)
    # The files a folder ignores are counted by rank 0 alone, so the ranks' counts add up to the whole's.
    listing = stats if part is None or part[0] == 0 else ReadStats()
    if remote.is_remote(source):
        _, _, kind, size = remote.info(source)
        if kind == "directory":
            files = remote_folder_files(source, listing)
            if not files:
                raise InputError(_no_input(source, listing))
            return remote_folder_rows(files, stats, without, columns, part)
        return open_remote_file(source, source.rstrip("/").rsplit("/", 1)[-1], stats, without, columns, share,
                                size=size)
    if source.startswith("file://"):
        source = source[len("file://"):]
    path = Path(source).expanduser()
    if not path.exists():
        hint = " (for a Hugging Face dataset use hf:NAME)" if not source.startswith(("/", ".", "~")) else ""
        raise InputError(f"input not found: {path}{hint}")
    if path.is_dir():
        local_files = folder_input_files(path, listing)
        if not local_files:
            raise InputError(_no_input(str(path), listing))
        return folder_rows(path, local_files, stats, without, columns, part)
    return open_file(path, path.name, stats, without, columns, share)


def _no_input(where: str, listing: ReadStats) -> str:
    ignored = f"; ignored: {dict(listing.ignored_files)}" if listing.ignored_files else ""
    return f"{where} holds no input files ({SUPPORTED}){ignored}"


def _project(rows: Iterator[dict[str, Any]], without: frozenset[str],
             columns: frozenset[str] | None) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {k: v for k, v in row.items() if k not in without and (columns is None or k in columns)}
