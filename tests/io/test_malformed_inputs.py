"""A corpus of malformed inputs, each with its expected handling; the last test runs the pipeline on many at once.

Every input is written to tmp_path by the test. The expected handling is one of:

- `Rows`: the read completes; the good rows are kept in order with their text intact; every malformed row is
  counted once under its reason, and the reason is logged; folder files that are not input are counted as ignored.
- `Bank`: the same for a template bank read by `rows_to_templates`.
- `Fails`: `read_rows` raises `InputError` with a clear message when it is called, before any row is read
  (so nothing downstream starts, and nothing is written).
- `ConfigFails`: `PipelineConfig.from_yaml` raises a ValueError that names the problem.

`.venv/bin/python -m tests.io.test_malformed_inputs` prints the corpus as a Markdown table (for the README).
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io import formats, read_stats
from fineinstructions.io.readers import InputError, ReadStats, read_rows
from fineinstructions.io.rows import rows_to_records, rows_to_templates
from fineinstructions.records import Document
from tests.test_pipeline import scripted as pipeline_scripted

Build = Callable[[Path, pytest.MonkeyPatch], str]
CONFIG_HEAD = "queries: {kind: sharegpt}\ndocuments: {kind: wikipedia}\n"


# -- input helpers ----------------------------------------------------------------------------------------


def good(i: int | str) -> str:
    """A good JSONL row: id g<i>, text "Good document g<i>."."""
    return json.dumps({"id": f"g{i}", "text": f"Good document g{i}."})


def row(**fields: object) -> str:
    return json.dumps(fields)


def jsonl(*lines: str | bytes) -> bytes:
    """Text lines each end with a newline; bytes are written exactly as given."""
    return b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines)


def write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def docs_table(ids: list[str], **columns: list) -> pa.Table:
    return pa.table({"id": ids, "text": [f"Good document {i}." for i in ids]} | columns)


def corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite one row group's text column chunk (page header and data) with garbage."""
    meta = pq.ParquetFile(path).metadata.row_group(group)
    chunk = next(meta.column(c) for c in range(meta.num_columns) if meta.column(c).path_in_schema == "text")
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(raw))


def deep(levels: int = 10_000) -> str:
    """A JSON list nested `levels` deep: far past what Python's parser recurses into."""
    return "[" * levels + "]" * levels


def deep_row(levels: int = 10_000) -> str:
    return '{"id": "x", "text": ' + deep(levels) + "}"


def fifo_in_folder(d: Path, mp: pytest.MonkeyPatch) -> str:
    write(d / "docs" / "a.jsonl", jsonl(good(1)))
    os.mkfifo(d / "docs" / "b.jsonl")  # opening it would block until a writer comes
    return str(d / "docs")


def config(d: Path, text: str) -> str:
    return write(d / "config.yaml", text)


def big_text_file(d: Path, mp: pytest.MonkeyPatch) -> str:
    write(d / "docs" / "big.txt", "x" * 500)
    write(d / "docs" / "g1.txt", "Good document g1.txt.")
    return str(d / "docs")


def junk_folder(d: Path, mp: pytest.MonkeyPatch) -> str:
    write(d / "docs" / ".DS_Store", b"\x00Bud1")
    write(d / "docs" / "a.jsonl", b"")
    write(d / "docs" / "x.png", b"\x89PNG")
    return str(d / "docs")


def non_utf8_file_name(d: Path, mp: pytest.MonkeyPatch) -> str:
    root = d / "docs"
    write(root / "g1.txt", "Good document g1.txt.")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.txt"), "wb") as handle:
        handle.write(b"A document whose file name is Latin-1.")
    return str(root)


def symlinks(d: Path, mp: pytest.MonkeyPatch) -> str:
    root = d / "docs"
    write(root / "a.jsonl", jsonl(good(1)))
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "gone.jsonl").symlink_to(d / "deleted.jsonl")
    return str(root)


def mixed_folder(d: Path, mp: pytest.MonkeyPatch) -> str:
    root = d / "docs"
    write(root / "a.jsonl", jsonl(good(1), "{oops", good(2)))
    root.mkdir(exist_ok=True)
    pq.write_table(docs_table(["g3"]), root / "b.parquet")
    write(root / "broken.parquet", "not parquet at all")
    write(root / "README.md", "# About this data set")
    write(root / "sub" / "d.json", json.dumps([json.loads(good(4))]))
    write(root / "sub" / "e.jsonl.gz", gzip.compress(jsonl(good(5))))
    write(root / ".DS_Store", b"\x00\x00\x00\x01Bud1\x00")
    write(root / ".cache" / "old.jsonl", jsonl(good(9)))
    write(root / ".part-00001.parquet.tmp-4242", b"PAR1 half-written")  # an interrupted atomic write
    write(root / "empty.jsonl", b"")
    write(root / "notes.csv", "id,text\n1,a\n")
    write(root / "rejects" / "shard-00000.jsonl", jsonl(good(8)))
    return str(root)


def compressed_folder(d: Path, mp: pytest.MonkeyPatch) -> str:
    root = d / "docs"
    write(root / "a.jsonl.gz", gzip.compress(jsonl(good(1))))
    write(root / "b.jsonl.zst", pa.Codec("zstd").compress(jsonl(good(2)), asbytes=True))
    write(root / "c.ndjson.bz2", bz2.compress(jsonl(good(3))))
    write(root / "d.json.xz", lzma.compress(json.dumps([json.loads(good(4))]).encode()))
    return str(root)


def parquet_with_corrupt_group(d: Path, mp: pytest.MonkeyPatch) -> str:
    path = d / "docs.parquet"
    pq.write_table(docs_table(["g1", "g2", "x1", "x2", "g3"]), path, row_group_size=2, compression="zstd",
                   use_dictionary=False)
    corrupt_row_group(path, 1)
    return str(path)


def parquet_file(d: Path, table: pa.Table) -> str:
    pq.write_table(table, d / "docs.parquet")
    return str(d / "docs.parquet")


def truncated_parquet(d: Path, mp: pytest.MonkeyPatch) -> str:
    source = parquet_file(d, docs_table(["g1", "g2"]))
    return write(d / "cut.parquet", Path(source).read_bytes()[:-30])


def unreadable_file(d: Path, mp: pytest.MonkeyPatch) -> str:
    path = write(d / "docs.jsonl", jsonl(good(1)))
    Path(path).chmod(0)
    return path


def unreadable_folder(d: Path, mp: pytest.MonkeyPatch) -> str:
    write(d / "docs" / "a.jsonl", jsonl(good(1)))
    (d / "docs").chmod(0)
    return str(d / "docs")


def unreadable_subfolder(d: Path, mp: pytest.MonkeyPatch) -> str:
    write(d / "docs" / "a.jsonl", jsonl(good(1)))
    write(d / "docs" / "locked" / "b.jsonl", jsonl(good(2)))
    (d / "docs" / "locked").chmod(0)
    return str(d / "docs")


def reads_without_permission(d: Path) -> bool:
    """True when this process can list a chmod-000 folder (root with CAP_DAC_OVERRIDE)."""
    probe = d / "probe"
    probe.mkdir()
    probe.chmod(0)
    try:
        os.listdir(probe)
        return True
    except PermissionError:
        return False
    finally:
        probe.chmod(0o755)
        probe.rmdir()


def limited(name: str, value: int, build: Build) -> Build:
    """`build` with a reader limit lowered, so a "too large" input stays small."""
    def wrapped(d: Path, mp: pytest.MonkeyPatch) -> str:
        mp.setattr(formats, name, value)
        return build(d, mp)
    return wrapped


# -- expectations -----------------------------------------------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} x{n}" if n > 1 else reason for reason, n in counts.items())


@dataclass(frozen=True)
class Rows:
    """The read completes with exactly these rows kept (in order), skips and ignored files."""

    ids: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    other_text: tuple[str, ...] = ()  # kept rows whose text is not "Good document <id>."

    def describe(self) -> str:
        parts = [f"skipped: {_counts(self.skipped)}" if self.skipped else "nothing skipped"]
        if self.ignored:
            parts.append(f"ignored files: {_counts(self.ignored)}")
        parts.append(f"{len(self.ids)} good row{'s' if len(self.ids) != 1 else ''} kept in order")
        return "; ".join(parts)


@dataclass(frozen=True)
class Bank:
    """A template bank: exactly these template ids kept, these rows skipped."""

    ids: list[str]
    skipped: dict[str, int]

    def describe(self) -> str:
        return f"skipped: {_counts(self.skipped)}; {len(self.ids)} good templates kept"


@dataclass(frozen=True)
class Fails:
    """`read_rows` raises InputError matching `match` at once."""

    match: str
    root_can_read: bool = False  # root reads anything: the case is skipped when run as root

    def describe(self) -> str:
        message = re.sub(r"\\(.)", r"\1", self.match).replace(".*", "…")
        return f"InputError at once: \"{message}\"; nothing read"


@dataclass(frozen=True)
class ConfigFails:
    """`PipelineConfig.from_yaml` raises a ValueError whose message holds every string of `names`."""

    names: tuple[str, ...]

    def describe(self) -> str:
        return "config error naming " + ", ".join(f"`{n}`" for n in self.names)


@dataclass(frozen=True)
class Case:
    kind: str
    input: str
    build: Build
    expect: Rows | Bank | Fails | ConfigFails
    note: str = ""
    root_can_read: bool = False


CASES = [
    # -- JSON Lines ---------------------------------------------------------------------------------------
    Case("jsonl: truncated last line", "last line cut mid-object, no newline",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), good(2)) + b'{"id": "g3", "text": "Good docu'),
         Rows(["g1", "g2"], {"truncated_last_line": 1})),
    Case("jsonl: invalid JSON line", "a line of broken JSON between good ones",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), '{"id": "x", text: oops}', good(2))),
         Rows(["g1", "g2"], {"malformed_json": 1})),
    Case("jsonl: line not an object", "lines holding a list, a string, a number, null",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), "[1, 2]", '"a string"', "42", "null", good(2))),
         Rows(["g1", "g2"], {"not_an_object": 4})),
    Case("jsonl: blank lines", "empty and whitespace-only lines anywhere",
         lambda d, mp: write(d / "docs.jsonl", jsonl("", good(1), "   ", "\t", good(2), "", "")),
         Rows(["g1", "g2"]), "blank lines are not rows: not counted"),
    Case("jsonl: UTF-8 BOM", "file starts with EF BB BF",
         lambda d, mp: write(d / "docs.jsonl", b"\xef\xbb\xbf" + jsonl(good(1), good(2))),
         Rows(["g1", "g2"]), "the BOM is dropped"),
    Case("jsonl: CRLF line ends", "Windows line ends",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), good(2)).replace(b"\n", b"\r\n")),
         Rows(["g1", "g2"])),
    Case("jsonl: invalid UTF-8 bytes", "a line with a Latin-1 byte",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), b'{"id": "x", "text": "caf\xe9"}\n', good(2))),
         Rows(["g1", "g2"], {"not_utf8": 1}), "never decoded with replacement characters"),
    Case("jsonl: raw NUL bytes", "a line holding 0x00 bytes",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), b'{"id": "x", "text": "a\x00\x00b"}\n', good(2))),
         Rows(["g1", "g2"], {"nul_bytes": 1})),
    Case("jsonl: UTF-16 file", "saved as UTF-16 (e.g. PowerShell redirection)",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1)).decode().encode("utf-16")),
         Fails("UTF-16 encoded: save it as UTF-8")),
    Case("jsonl: very long single line", "one line over MAX_LINE_BYTES (lowered to 256 here)",
         limited("MAX_LINE_BYTES", 256,
                 lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), row(id="x", text="y" * 5000), good(2)))),
         Rows(["g1", "g2"], {"line_too_long": 1}), "read in bounded pieces, never held whole"),
    Case("jsonl: lone surrogate escape", r'text "\ud800" (cannot be written as UTF-8)',
         lambda d, mp: write(d / "docs.jsonl", jsonl(
             good(1), '{"id": "x", "text": "broken \\ud800 text"}',
             '{"id": "g2", "text": "Good document g2. \\ud83d\\ude00"}')),
         Rows(["g1", "g2"], {"lone_surrogate": 1}), "a valid escaped pair (emoji) is kept"),
    Case("jsonl: deeply nested line", "a line nested 10,000 levels; one nested 300 levels",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), deep_row(), good(2), deep_row(300), good(3))),
         Rows(["g1", "g2", "g3"], {"json_too_deep": 2}),
         f"more than MAX_JSON_DEPTH ({formats.MAX_JSON_DEPTH}) levels; never a RecursionError"),
    # -- fields -------------------------------------------------------------------------------------------
    Case("field: text missing", "a row without the text field",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), row(id="x", body="no text"), good(2))),
         Rows(["g1", "g2"], {"missing_text": 1}), "the log names the row's fields"),
    Case("field: text null", '"text": null',
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), row(id="x", text=None), good(2))),
         Rows(["g1", "g2"], {"missing_text": 1})),
    Case("field: text of wrong type", "text is a number, a bool, a list of strings, a dict",
         lambda d, mp: write(d / "docs.jsonl", jsonl(
             good(1), row(id="a", text=42), row(id="b", text=True), row(id="c", text=["x", "y"]),
             row(id="d", text={"t": "x"}), good(2))),
         Rows(["g1", "g2"], {"ill_typed_text": 4})),
    Case("field: chat without a user turn", "text is a message list with assistant turns only",
         lambda d, mp: write(d / "docs.jsonl", jsonl(
             good(1), row(id="x", text=[{"role": "assistant", "content": "hi"}]),
             row(id="g2", text=[{"from": "gpt", "value": "hi"}, {"from": "human", "value": "Good document g2."}]))),
         Rows(["g1", "g2"], {"no_user_turn": 1}), "a chat with a user turn yields that turn"),
    Case("field: NUL in text", r'text holds an escaped "\u0000"',
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), '{"id": "x", "text": "a\\u0000b"}', good(2))),
         Rows(["g1", "g2"], {"nul_in_text": 1})),
    Case("field: empty / whitespace text", 'text "" and "  \\n "',
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), row(id="e1", text=""), row(id="e2", text="  \n "),
                                                     good(2))),
         Rows(["g1", "e1", "e2", "g2"], other_text=("e1", "e2")),
         "kept by the reader; match drops them (`empty_document`), query_filter (`too_short`)"),
    Case("field: duplicate ids", "an id repeated with the same and with another text",
         lambda d, mp: write(d / "docs.jsonl", jsonl(good(1), row(id="g1", text="Another text."), good(2), good(2))),
         Rows(["g1", "g2"], {"duplicate_id": 2}), "the first row with an id wins"),
    Case("field: id of wrong type", "id true, {}, [1], \"\", NaN (7 and 8.0 are fine)",
         lambda d, mp: write(d / "docs.jsonl", jsonl(
             good(1), row(id=True, text="x"), row(id={"a": 1}, text="x"), row(id=[1], text="x"), row(id="", text="x"),
             '{"id": NaN, "text": "x"}', row(id=7, text="Good document 7."), row(id=8.0, text="Good document 8."))),
         Rows(["g1", "7", "8"], {"invalid_id": 5}), "an integral float id keeps its int form"),
    Case("field: title of wrong type", "title is a dict",
         lambda d, mp: write(d / "docs.jsonl", jsonl(json.dumps(json.loads(good(1)) | {"title": {"a": 1}}))),
         Rows(["g1"]), "the optional title becomes empty"),
    # -- JSON -----------------------------------------------------------------------------------------------
    Case("json: truncated array", "a JSON list cut off mid-object",
         lambda d, mp: write(d / "docs.json", "[" + ", ".join([good(1), good(2)]) + ', {"id": "g3", "te'),
         Rows(["g1", "g2"], {"truncated_json": 1}), "every complete object before the cut is kept"),
    Case("json: object, not a list", '{"items": [...]}',
         lambda d, mp: write(d / "docs.json", json.dumps({"items": [json.loads(good(1))]})),
         Fails(r"expected a JSON list of objects .* found an object with keys \['items'\]"),
         "an object with a `data` or `rows` list is read"),
    Case("json: a scalar", "the file holds 42",
         lambda d, mp: write(d / "docs.json", "42"), Fails("expected a JSON list of objects .* found a number")),
    Case("json: corrupt in the middle", "a broken object inside a complete list",
         lambda d, mp: write(d / "docs.json", "[\n" + good(1) + ",\n{bad},\n" + good(2) + "\n]"),
         Fails("cannot parse .* as JSON: .* at line 3, column 2")),
    Case("json: JSON Lines in a .json file", "one object a line, named .json",
         lambda d, mp: write(d / "docs.json", jsonl(good(1), "{oops", good(2))),
         Rows(["g1", "g2"], {"malformed_json": 1}), "read as JSON Lines (logged)"),
    Case("json: invalid UTF-8 in one row", "a Latin-1 byte inside one object of the list",
         lambda d, mp: write(d / "docs.json", b"[" + good(1).encode() + b', {"id": "x", "text": "caf\xe9"}, '
                             + good(2).encode() + b"]"),
         Rows(["g1", "g2"], {"not_utf8": 1})),
    Case("json: file too large", "a .json over MAX_JSON_FILE_BYTES (lowered to 64 here)",
         limited("MAX_JSON_FILE_BYTES", 64, lambda d, mp: write(d / "docs.json", "[" + good(1) + ", " + good(2) + "]")),
         Fails("larger than 64 bytes: .* convert it to JSON Lines")),
    Case("json: deeply nested element", "one element of a list nested 10,000 levels",
         lambda d, mp: write(d / "docs.json", "[" + ", ".join([good(1), deep_row(), good(2)]) + "]"),
         Rows(["g1", "g2"], {"json_too_deep": 1}), "the list is parsed element by element"),
    Case("json: deeply nested and truncated", "a list with a 10,000-level element, cut off",
         lambda d, mp: write(d / "docs.json", "[" + ", ".join([good(1), deep_row(), good(2)]) + ', {"id": "g3'),
         Rows(["g1", "g2"], {"json_too_deep": 1, "truncated_json": 1})),
    Case("json: deeply nested whole file", '{"data": [...]} holding a 10,000-level value',
         lambda d, mp: write(d / "docs.json", '{"data": [' + good(1) + ", " + deep_row() + "]}"),
         Rows([], {"json_too_deep": 1}), "the file is skipped"),
    Case("json: deeply nested JSON Lines", "JSON Lines named .json, one line nested 10,000 levels",
         lambda d, mp: write(d / "docs.json", jsonl(good(1), deep_row(), good(2))),
         Rows(["g1", "g2"], {"json_too_deep": 1}), "read as JSON Lines"),
    Case("json: whitespace only", "a .json file of blanks",
         lambda d, mp: write(d / "docs.json", " \n\n "), Fails("holds no JSON")),
    # -- Parquet --------------------------------------------------------------------------------------------
    Case("parquet: truncated", "the last 30 bytes (footer) cut off",
         truncated_parquet, Fails("cannot read .* as Parquet \\(truncated or not Parquet\\)")),
    Case("parquet: not Parquet at all", "a text file named .parquet",
         lambda d, mp: write(d / "docs.parquet", "id,text\n1,hello\n"), Fails("as Parquet")),
    Case("parquet: text column missing", "columns id, body",
         lambda d, mp: parquet_file(d, pa.table({"id": ["a", "b", "c"], "body": ["x", "y", "z"]})),
         Rows([], {"missing_text": 3}), "the first skips log the columns found"),
    Case("parquet: text column of wrong type", "text is int64",
         lambda d, mp: parquet_file(d, pa.table({"id": ["a", "b", "c"], "text": [1, 2, 3]})),
         Rows([], {"ill_typed_text": 3})),
    Case("parquet: damaged row group", "one row group's pages overwritten",
         parquet_with_corrupt_group, Rows(["g1", "g2", "g3"], {"corrupt_row_group": 2}),
         "the other row groups are read; each lost row is counted"),
    # -- compression ----------------------------------------------------------------------------------------
    Case("compressed JSONL/JSON", ".jsonl.gz, .jsonl.zst, .ndjson.bz2, .json.xz", compressed_folder,
         Rows(["g1", "g2", "g3", "g4"]), "supported"),
    Case("compressed: truncated gzip", "a .jsonl.gz cut inside its second member",
         lambda d, mp: write(d / "docs.jsonl.gz", gzip.compress(jsonl(good(1), good(2)))
                             + gzip.compress(jsonl(*(good(i) for i in range(3, 200))))[:40]),
         Rows(["g1", "g2"], {"truncated_compressed_file": 1}), "rows before the cut are kept"),
    Case("compressed: wrong name", "plain text named .jsonl.gz",
         lambda d, mp: write(d / "docs.jsonl.gz", jsonl(good(1))), Fails("is named .gz but is not gzip-compressed")),
    # -- files and folders ----------------------------------------------------------------------------------
    Case("file: empty", "a zero-byte .jsonl", lambda d, mp: write(d / "docs.jsonl", b""),
         Fails(r"is empty \(0 bytes\)")),
    Case("file: unknown extension", "docs.csv", lambda d, mp: write(d / "docs.csv", "id,text\n"),
         Fails("unknown input format .* use .jsonl")),
    Case("file: does not exist", "a path that is not there", lambda d, mp: str(d / "nope.jsonl"),
         Fails("input not found: .*nope.jsonl")),
    Case("file: no permission", "chmod 000 on the input file", unreadable_file,
         Fails("cannot read .*docs.jsonl: Permission denied"), root_can_read=True),
    Case("folder: file without permission", "chmod 000 on one file of the folder",
         lambda d, mp: unreadable_file(d, mp) and str(d),
         Rows([], {"unreadable_file": 1}), root_can_read=True),
    Case("file: text file too large", "a .txt over MAX_TEXT_FILE_BYTES (lowered to 64 here)",
         limited("MAX_TEXT_FILE_BYTES", 64, big_text_file),
         Rows(["g1.txt"], {"file_too_large": 1})),
    Case("file: text with BOM and CRLF", "a .txt saved by Notepad",
         lambda d, mp: write(d / "g1.txt", b"\xef\xbb\xbfGood document g1.txt.\r\nSecond line.\r\n"),
         Rows(["g1.txt"], other_text=("g1.txt",)), "BOM dropped, line ends become \\n"),
    Case("file: name not UTF-8", "docs/caf\\xe9.txt beside a good file", non_utf8_file_name,
         Rows(["g1.txt"], {"invalid_id": 1}), "its id (the path) could not be written"),
    Case("folder: empty", "an empty folder", lambda d, mp: (d / "docs").mkdir() or str(d / "docs"),
         Fails("holds no input files")),
    Case("folder: only junk", ".DS_Store, a zero-byte .jsonl, a .png",
         junk_folder,
         Fails(r"holds no input files .* ignored: \{'hidden': 1, 'empty_file': 1, 'unsupported_format': 1\}")),
    Case("folder: mixed formats and junk",
         ".jsonl (one bad line), .parquet, broken .parquet, README.md, sub/.json, sub/.jsonl.gz, .DS_Store, "
         ".cache/, a half-written .tmp file, zero-byte .jsonl, .csv, rejects/",
         mixed_folder,
         Rows(["g1", "g2", "g3", "g4", "g5"], {"malformed_json": 1, "unreadable_file": 1},
              {"hidden": 3, "empty_file": 1, "unsupported_format": 1, "stage_rejects": 1, "text_beside_data": 1}),
         "files read in path order, subfolders walked; text files are documents only in a folder of text files"),
    Case("folder: symlink loop and dangling link", "docs/loop -> docs, docs/gone.jsonl -> missing file", symlinks,
         Rows(["g1"], {"unreadable_file": 1}), "the loop is walked once"),
    Case("folder: named pipe", "a FIFO docs/b.jsonl beside a good file", fifo_in_folder,
         Rows(["g1"], {}, {"special_file": 1}), "never opened: a pipe would block the walk"),
    Case("file: named pipe of Parquet", "a FIFO named docs.parquet",
         lambda d, mp: os.mkfifo(d / "docs.parquet") or str(d / "docs.parquet"),
         Fails("is a named pipe: Parquet needs a seekable file"),
         "JSON Lines and JSON from a pipe or stdin (-) are read as a stream"),
    Case("folder: no permission", "chmod 000 on the input folder", unreadable_folder,
         Fails("cannot read folder .*: Permission denied"), root_can_read=True),
    Case("folder: subfolder without permission", "chmod 000 on a subfolder", unreadable_subfolder,
         Rows(["g1"], {"unreadable_folder": 1}), root_can_read=True),
    Case("hf: empty name", "hf:", lambda d, mp: "hf:", Fails("hf: needs a dataset name")),
    Case("hf: bad name", "hf:not a name!", lambda d, mp: "hf:not a name!",
         Fails("is not a Hugging Face dataset name")),
    Case("hf: missing local folder", "hf:./no/such/folder", lambda d, mp: "hf:./no/such/folder",
         Fails("no local Hugging Face dataset folder")),
    # -- template banks -------------------------------------------------------------------------------------
    Case("bank: no <fi> variables", "a template without variables",
         lambda d, mp: write(d / "bank.jsonl", jsonl(
             row(template_id="t1", template="What is <fi>concept</fi>?", compatible_document_description="A page."),
             row(template_id="x", template="What is entropy?", compatible_document_description="A page."))),
         Bank(["t1"], {"invalid_template_no_variables": 1})),
    Case("bank: unbalanced tags", "<fi> unclosed, </fi> first, nested <fi>",
         lambda d, mp: write(d / "bank.jsonl", jsonl(
             row(template="What is <fi>x?", compatible_document_description="A page."),
             row(template="What </fi> is <fi>x</fi>?", compatible_document_description="A page."),
             row(template="What is <fi>a <fi>b</fi></fi>?", compatible_document_description="A page."),
             row(template_id="t1", template="Why <fi>event</fi>?", compatible_document_description="A page."))),
         Bank(["t1"], {"invalid_template_unclosed_fi": 1, "invalid_template_unbalanced_fi": 1,
                       "invalid_template_nested_fi": 1})),
    Case("bank: empty variables", "<fi></fi> and <fi>   </fi>",
         lambda d, mp: write(d / "bank.jsonl", jsonl(
             row(template="What is <fi></fi>?", compatible_document_description="A page."),
             row(template="What is <fi>   </fi>?", compatible_document_description="A page."),
             row(template_id="t1", template="Why <fi>event</fi>?", compatible_document_description="A page."))),
         Bank(["t1"], {"invalid_template_empty_variable": 2})),
    Case("bank: description missing or empty", "no description; a blank one",
         lambda d, mp: write(d / "bank.jsonl", jsonl(
             row(template="What is <fi>x</fi>?"),
             row(template="What is <fi>x</fi>?", compatible_document_description="  "),
             row(template_id="t1", template="Why <fi>event</fi>?", compatible_document_description="A page."))),
         Bank(["t1"], {"missing_template_fields": 1, "invalid_template_empty_description": 1})),
    Case("bank: bad or duplicate template ids", "template_id true; one id twice",
         lambda d, mp: write(d / "bank.jsonl", jsonl(
             row(template_id=True, template="What is <fi>x</fi>?", compatible_document_description="A page."),
             row(template_id="t1", template="Why <fi>event</fi>?", compatible_document_description="A page."),
             row(template_id="t1", template="How <fi>thing</fi>?", compatible_document_description="A page."))),
         Bank(["t1"], {"invalid_template_id": 1, "duplicate_template_id": 1}), "the first row with an id wins"),
    # -- configuration --------------------------------------------------------------------------------------
    Case("config: unknown key", "a top-level `shards: 4`",
         lambda d, mp: config(d, CONFIG_HEAD + "shards: 4\n"), ConfigFails(("shards", "Extra inputs"))),
    Case("config: wrong types", "shard_size: big, top_k: [1]",
         lambda d, mp: config(d, CONFIG_HEAD + "run: {shard_size: big}\nmatch: {top_k: [1]}\n"),
         ConfigFails(("run.shard_size", "match.top_k", "valid integer"))),
    Case("config: negative or zero sizes", "shard_size -1, top_k 0, limit 0, n_ctx -5, max_tokens 0",
         lambda d, mp: config(d, "queries: {kind: sharegpt, limit: 0}\ndocuments: {kind: wikipedia}\n"
                                 "run: {shard_size: -1}\nmatch: {top_k: 0}\ngenerator: {n_ctx: -5}\n"
                                 "instantiate: {max_tokens: 0}\n"),
         ConfigFails(("queries.limit", "run.shard_size", "match.top_k", "generator.n_ctx", "instantiate.max_tokens",
                      "greater than or equal to 1"))),
    Case("config: bad hf: name", "documents path hf:bad name!",
         lambda d, mp: config(d, "queries: {kind: sharegpt}\ndocuments: {path: 'hf:bad name!'}\n"),
         ConfigFails(("documents", "not a Hugging Face dataset name"))),
    Case("config: YAML syntax error", "an unclosed bracket",
         lambda d, mp: config(d, "queries: {kind: sharegpt\n"), ConfigFails(("cannot read config",))),
    Case("config: empty file", "a zero-byte config.yaml",
         lambda d, mp: config(d, ""), ConfigFails(("must be a YAML mapping",))),
]


@pytest.mark.parametrize("case", CASES, ids=[re.sub(r"\W+", "-", c.kind).strip("-") for c in CASES])
def test_malformed_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         caplog: pytest.LogCaptureFixture) -> None:
    if case.root_can_read and reads_without_permission(tmp_path):
        pytest.skip("this process (root) reads folders without permission")
    source = case.build(tmp_path, monkeypatch)
    expect = case.expect
    stats = ReadStats()
    caplog.set_level(logging.WARNING, logger="fineinstructions.io.readers")
    try:
        if isinstance(expect, ConfigFails):
            from fineinstructions.config import PipelineConfig

            with pytest.raises((ValueError, FineInstructionsError)) as raised:  # ConfigError
                PipelineConfig.from_yaml(source)
            for name in expect.names:
                assert name in str(raised.value)
            return
        if isinstance(expect, Fails):
            with pytest.raises(InputError, match=expect.match):
                read_rows(source, stats=stats)  # not iterated: the error comes at once
            return
        rows = read_rows(source, stats=stats)
        if isinstance(expect, Bank):
            assert [t.template_id for t in rows_to_templates(rows, stats)] == expect.ids
        else:
            records = list(rows_to_records(rows, Document, stats=stats, source="docs"))
            assert [r.document_id for r in records] == expect.ids
            for record in records:
                if record.document_id not in expect.other_text:
                    assert record.text.startswith(f"Good document {record.document_id}.")
            assert dict(stats.ignored_files) == expect.ignored
        assert dict(stats.skipped) == expect.skipped
        for reason in expect.skipped:
            assert f": {reason}" in caplog.text  # every reason is logged
    finally:
        for path in tmp_path.rglob("*"):  # give pytest back what a case locked
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)


def test_text_with_bom_and_crlf_is_normalised(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", b"\xef\xbb\xbfFirst line.\r\nSecond line.\rThird.\r\n")
    assert [r["text"] for r in read_rows(str(tmp_path / "a.txt"))] == ["First line.\nSecond line.\nThird.\n"]


def test_many_skips_are_all_counted_but_logged_only_a_few_times(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "docs.jsonl", jsonl(*(["{oops"] * 1000), good(1)))
    stats = ReadStats()
    caplog.set_level(logging.WARNING, logger="fineinstructions.io.readers")
    assert [r["id"] for r in read_rows(path, stats=stats)] == ["g1"]
    assert stats.skipped == {"malformed_json": 1000}
    assert caplog.text.count(": malformed_json") == read_stats.LOGGED_PER_REASON


def test_limit_pulls_no_row_past_the_last_one_it_keeps(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", jsonl(good(1), good(2), "{oops"))
    stats = ReadStats()
    records = list(rows_to_records(read_rows(path, stats=stats), Document, stats=stats, limit=2))
    assert [r.document_id for r in records] == ["g1", "g2"]
    assert stats.skipped == {}  # the bad third line was never read


# -- the whole pipeline on a folder of good and malformed documents ------------------------------------------

GOOD_DOCUMENTS = {
    "acid": "Acid rain is rain or any other form of precipitation that is unusually acidic. It can have harmful "
            "effects on plants, aquatic animals and infrastructure. Acid rain is caused by emissions of sulfur "
            "dioxide and nitrogen oxide, which react with the water molecules in the atmosphere to produce acids.",
    "denmark": "Denmark is a Nordic country in Northern Europe. It is the most populous and politically central "
               "constituent of the Kingdom of Denmark, a constitutionally unitary state that includes the "
               "autonomous territories of the Faroe Islands and Greenland in the North Atlantic Ocean.",
    "fluid": "Fluid dynamics is a subdiscipline of fluid mechanics that describes the flow of fluids, liquids and "
             "gases. It has several subdisciplines, including aerodynamics, the study of air and other gases in "
             "motion, and hydrodynamics, the study of water and other liquids in motion.",
    "volcano": "A volcano is a rupture in the crust of a planetary-mass object, such as Earth, that allows hot lava, "
               "volcanic ash, and gases to escape from a magma chamber below the surface. On Earth, volcanoes are "
               "most often found where tectonic plates are diverging or converging.",
    "glacier": "A glacier is a persistent body of dense ice that is constantly moving under its own weight. A "
               "glacier forms where the accumulation of snow exceeds its ablation over many years, often "
               "centuries. It acquires distinguishing features, such as crevasses and seracs, as it slowly flows.",
    "bee": "The honey bee is a eusocial flying insect within the genus Apis of the bee clade, all native to "
           "mainland Afro-Eurasia. After bees spread naturally throughout Africa and Eurasia, humans became "
           "responsible for the current cosmopolitan distribution of honey bees, introducing several species.",
}


def write_messy_documents(root: Path) -> dict[str, int]:
    """A documents folder mixing the good documents with malformed rows and files; returns the expected skips."""
    doc = {k: json.dumps({"id": k, "text": v, "title": k}) for k, v in GOOD_DOCUMENTS.items()}
    write(root / "a.jsonl", jsonl(
        doc["acid"], "{oops", "[1, 2]", row(id="m", body="no text"), row(id="t", text=7), row(id=True, text="x"),
        doc["acid"].replace("Acid rain is", "Acid rain was"), '{"id": "z", "text": "a\\u0000b"}',
        '{"id": "s", "text": "\\udc00"}', b'{"id": "u", "text": "caf\xe9"}\n', doc["denmark"],
        row(id="blank", text="   "), row(id="huge", text="word " * 1000),
    ) + b'{"id": "cut", "text": "Cut off he')
    write(root / "b.json", "[" + doc["fluid"] + ', {"id": "cut2", "te')
    pq.write_table(pa.table({"id": ["volcano", "lost"], "text": [GOOD_DOCUMENTS["volcano"], "x" * 500]}),
                   root / "c.parquet", row_group_size=1, compression="zstd", use_dictionary=False)
    corrupt_row_group(root / "c.parquet", 1)
    write(root / "README.md", "# Documents\nA text file beside data files is not a document.")
    write(root / "d.jsonl.bz2", bz2.compress(jsonl(doc["bee"])))
    write(root / "e.jsonl.gz", gzip.compress(jsonl(doc["glacier"])))
    write(root / "broken.parquet", "not parquet")
    write(root / ".DS_Store", b"\x00Bud1")
    write(root / "empty.jsonl", b"")
    write(root / "notes.csv", "a,b\n")
    return {"malformed_json": 1, "not_an_object": 1, "missing_text": 1, "ill_typed_text": 1, "invalid_id": 1,
            "duplicate_id": 1, "nul_in_text": 1, "lone_surrogate": 1, "not_utf8": 1, "truncated_last_line": 1,
            "truncated_json": 1, "corrupt_row_group": 1, "unreadable_file": 1}


def scripted(conversation: list[dict[str, str]]) -> str:
    """The pipeline tests' stand-in model, with every pair judged 5."""
    if conversation[0]["content"].startswith("You are a strict judge"):
        return "<feedback>Fine.</feedback><score>5</score>"
    return pipeline_scripted(conversation)


def test_pipeline_completes_on_a_folder_of_good_and_malformed_documents(tmp_path: Path) -> None:
    from fineinstructions.backends.fake import FakeBackend
    from fineinstructions.config import BackendConfig, PipelineConfig, RunConfig, SourceConfig
    from fineinstructions.io.writers import read_records
    from fineinstructions.pipeline import Pipeline
    from fineinstructions.records import Match, Pair

    expected_skips = write_messy_documents(tmp_path / "docs")
    bank = write(tmp_path / "bank.jsonl", jsonl(
        row(template_id="t-what", template="What is <fi>natural phenomenon or place</fi>?",
            compatible_document_description="An encyclopedia article about a natural phenomenon or a place."),
        row(template_id="t-how", template="How does <fi>physical process</fi> work?",
            compatible_document_description="An encyclopedia article explaining a physical process."),
        row(template_id="t-bad", template="What is entropy?", compatible_document_description="A page."),
        row(template="Where is <fi>country?", compatible_document_description="A page about a country."),
    ))
    cfg = PipelineConfig(
        queries=SourceConfig(path=bank), documents=SourceConfig(path=str(tmp_path / "docs")),
        templates=SourceConfig(path=bank), generator=BackendConfig(model="scripted"),
        run=RunConfig(output_dir=str(tmp_path / "run"), shard_size=3, batch_size=2),
    )
    cfg.match.top_k = 1
    cfg.match.max_document_chars = 3000
    pipeline = Pipeline(cfg, show_progress=False)
    backend = FakeBackend(scripted, model_id="scripted")
    pipeline.backends.register(cfg.generator, backend)
    summary = pipeline.run()

    # Every malformed row is counted under its reason; the good ones (and two the stages drop) were read.
    assert summary["inputs"]["documents_read_skips"] == expected_skips
    assert summary["inputs"]["templates_read_skips"] == {"invalid_template_no_variables": 1,
                                                         "invalid_template_unclosed_fi": 1}
    assert summary["inputs"]["documents"] == len(GOOD_DOCUMENTS) + 2
    match = summary["stages"]["match"]
    assert match["rows_in"] == len(GOOD_DOCUMENTS) + 2
    assert match["dropped"] == {"empty_document": 1, "document_too_long": 1}
    # Every good document was matched and reached the model.
    matches = read_records(tmp_path / "run" / "work" / "match", Match)
    assert {m.document_id for m in matches} == set(GOOD_DOCUMENTS)
    prompts = "\n".join(c[-1]["content"] for c in backend.calls)
    for text in GOOD_DOCUMENTS.values():
        assert text[:60] in prompts
    assert summary["stages"]["instantiate"]["rows_in"] == len(matches)
    assert read_records(tmp_path / "run" / "dataset", Pair)
    # Nothing is half-written: no temporary file is left and every file reads back whole.
    run = tmp_path / "run"
    assert not [p for p in run.rglob(".*") if ".tmp-" in p.name]
    for file in run.rglob("*.parquet"):
        pq.read_table(file)
    assert json.loads((run / "summary.json").read_text())["inputs"] == json.loads(json.dumps(summary["inputs"]))


def markdown_table() -> str:
    """The corpus as a Markdown table: kind, input, expected handling."""
    lines = ["| kind | input | handling |", "| --- | --- | --- |"]
    for case in CASES:
        handling = case.expect.describe() + (f" ({case.note})" if case.note else "")
        if case.root_can_read:
            handling += " (test skipped as root)"
        lines.append(f"| {case.kind} | {case.input.replace('|', '/')} | {handling} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
