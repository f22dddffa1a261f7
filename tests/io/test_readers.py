from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.io.readers import InputError, ReadStats, read_rows
from fineinstructions.io.rows import first_user_turn, rows_to_records
from fineinstructions.records import Document, Query


def test_jsonl_skips_malformed_lines_with_counted_reasons(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "a"}\n{broken\n\n[1, 2]\n{"text": "b"}\n')
    stats = ReadStats()
    rows = list(read_rows(str(path), stats=stats))
    assert [r["text"] for r in rows] == ["a", "b"]
    assert stats.skipped == {"malformed_json": 1, "not_an_object": 1}


def test_parquet_file_and_folder(tmp_path):
    pq.write_table(pa.table({"text": ["x", "y"], "id": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["z"], "id": [3]}), tmp_path / "b.parquet")
    assert [r["text"] for r in read_rows(str(tmp_path / "a.parquet"))] == ["x", "y"]
    assert [r["text"] for r in read_rows(str(tmp_path))] == ["x", "y", "z"]
    # A stage's output folder: its rejects/ are dropped rows, not input.
    (tmp_path / "rejects").mkdir()
    pq.write_table(pa.table({"reason": ["null"]}), tmp_path / "rejects" / "shard-00000.parquet")
    assert [r["text"] for r in read_rows(str(tmp_path))] == ["x", "y", "z"]


def test_text_folder_skips_binary_and_non_utf8(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "one.txt").write_text("First document.")
    (tmp_path / "sub" / "two.md").write_text("Second document.")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "ignored.png").write_bytes(b"\x89PNG")
    stats = ReadStats()
    rows = list(read_rows(str(tmp_path), stats=stats))
    assert sorted(r["id"] for r in rows) == ["one.txt", "sub/two.md"]
    assert stats.skipped == {"binary_file": 1, "not_utf8": 1}


def test_local_hugging_face_dataset_is_streamed(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    with (folder / "train.jsonl").open("w") as handle:
        for i in range(5):
            handle.write(json.dumps({"question": f"What is thing {i}?", "qid": i}) + "\n")
    rows = list(read_rows(f"hf:{folder}", split="train"))
    queries = list(rows_to_records(rows, Query, text_field="question", id_field="qid"))
    assert [q.query_id for q in queries] == ["0", "1", "2", "3", "4"]
    assert queries[0].text == "What is thing 0?"


def test_missing_input_and_unknown_format_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(read_rows(str(tmp_path / "nope.jsonl")))
    (tmp_path / "data.xyz").write_text("?")
    with pytest.raises(InputError, match="unknown input format"):
        list(read_rows(str(tmp_path / "data.xyz")))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="Parquet"):
        list(read_rows(str(tmp_path / "bad.parquet")))
    with pytest.raises(InputError, match="Hugging Face"):
        list(read_rows(f"hf:{tmp_path / 'no_such_dataset'}"))


def test_rows_to_records_counts_missing_and_ill_typed_fields():
    rows = [
        {"text": "good", "id": "a"},
        {"body": "no text field"},
        {"text": 42},
        {"text": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "chat question"}]},
        {"meta": {"t": "nested"}, "id": "n"},
    ]
    stats = ReadStats()
    queries = list(rows_to_records(rows, Query, stats=stats, source="s"))
    assert [q.text for q in queries] == ["good", "chat question"]
    assert stats.skipped == {"missing_text": 2, "ill_typed_text": 1}
    nested = list(rows_to_records(rows[4:], Document, text_field="meta.t"))
    assert nested[0].text == "nested" and nested[0].document_id == "n"


def test_first_user_turn_skips_assistant_turns():
    assert first_user_turn([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}]) == "q"
    assert first_user_turn("not a list") is None


def test_released_finetemplates_rows_are_read_with_aliases():
    from fineinstructions.io.rows import rows_to_templates

    rows = [
        {"template_id": 7, "template": "What is <fi>concept</fi>?", "compatible_document_description": "An article.",
         "query": "What is entropy?", "popularity": 3},
        {"instruction_template": "How do I <fi>task</fi>?", "document_description": "A how-to guide."},
        {"template": "No variables here", "compatible_document_description": "x"},
        {"template": "What is <fi>x</fi>?"},
    ]
    stats = ReadStats()
    templates = list(rows_to_templates(rows, stats))
    assert [t.template_id for t in templates][0] == "7"
    assert templates[0].popularity == 3 and templates[0].variables == ["concept"]
    assert templates[1].template == "How do I <fi>task</fi>?" and templates[1].template_id.startswith("tpl-")
    assert stats.skipped == {"invalid_template_no_variables": 1, "missing_template_fields": 1}


# -- deeply nested JSON (never a RecursionError) ---------------------------------------------------------

DEEP_TEXT = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize("kind", [Query, Document])
def test_jsonl_line_nested_10000_levels_is_a_counted_skip(tmp_path, kind):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"id": f"r{i}", "text": f"row {i}"}) for i in range(3)]
    path.write_text("\n".join([lines[0], '{"id": "deep", "text": ' + DEEP_TEXT + "}", lines[1], DEEP_TEXT,
                               lines[2]]) + "\n")
    stats = ReadStats()
    records = list(rows_to_records(read_rows(str(path), stats=stats), kind, stats=stats))
    assert [r.text for r in records] == ["row 0", "row 1", "row 2"]
    assert stats.skipped == {"json_too_deep": 2}


def test_json_list_with_one_deep_element_keeps_the_others(tmp_path):
    path = tmp_path / "rows.json"
    # The deep elements are stepped over bracket by bracket: brackets and quotes inside strings do not count.
    path.write_text('[{"text": "a"}, {"s": "x]}\\"]", "text": ' + DEEP_TEXT + '}, {"text": "b", "s": "x]\\"[{"}, '
                    + DEEP_TEXT + ', {"text": "c"}]')
    stats = ReadStats()
    assert [r["text"] for r in read_rows(str(path), stats=stats)] == ["a", "b", "c"]
    assert stats.skipped == {"json_too_deep": 2}


def test_nesting_past_max_json_depth_is_skipped_even_when_python_could_parse_it(tmp_path):
    from fineinstructions.io.formats import MAX_JSON_DEPTH

    ok, too_deep = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1), "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    rows = [{"text": "a", "n": json.loads(ok)}, {"text": "b", "n": json.loads(too_deep)}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    for name in ("rows.jsonl", "rows.json"):
        stats = ReadStats()
        assert [r["text"] for r in read_rows(str(tmp_path / name), stats=stats)] == ["a"]
        assert stats.skipped == {"json_too_deep": 1}


# -- named pipes and stdin: read once, as a stream ---------------------------------------------------------

COMPRESS = {None: lambda b: b, "gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zstd": lambda b: pa.Codec("zstd").compress(b, asbytes=True)}


def docs_jsonl(n: int = 16) -> bytes:
    return "".join(json.dumps({"id": f"d{i}", "text": f"Document {i}."}) + "\n" for i in range(n)).encode()


def write_fifo(path, data: bytes, pieces: int = 7) -> threading.Thread:
    """A writer thread feeding `data` into the named pipe `path` in small pieces (3 bytes first)."""
    def feed():
        try:
            with open(path, "wb", buffering=0) as pipe:
                cuts = [0, 3] + [3 + (len(data) - 3) * k // pieces for k in range(1, pieces + 1)]
                for start, end in itertools.pairwise(cuts):
                    pipe.write(data[start:end])
                    time.sleep(0.01)
        except BrokenPipeError:  # the reader refused the input
            pass
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def read_with_timeout(source: str, timeout: float = 30) -> tuple[list[str], ReadStats]:
    """The ids `read_rows(source)` yields, read in a thread: a hang fails the test instead of blocking it."""
    out: dict = {}

    def read():
        try:
            stats = ReadStats()
            out["ids"] = [r["id"] for r in read_rows(source, stats=stats)]
            out["stats"] = stats
        except BaseException as err:  # handed to the test thread
            out["error"] = err
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"reading {source} hung"
    if "error" in out:
        raise out["error"]
    return out["ids"], out["stats"]


def test_named_pipe_of_jsonl_loses_no_row(tmp_path):
    path = tmp_path / "docs.jsonl"
    os.mkfifo(path)
    writer = write_fifo(path, docs_jsonl(16))
    ids, stats = read_with_timeout(str(path))
    writer.join(5)
    assert ids == [f"d{i}" for i in range(16)]
    assert stats.rows == 16 and stats.skipped == {}


@pytest.mark.parametrize("compression", list(COMPRESS))
@pytest.mark.parametrize("as_list", [False, True], ids=["jsonl", "json-list"])
def test_named_pipe_without_suffix_is_sniffed(tmp_path, compression, as_list):
    """Like /dev/fd/63 of `<(zcat docs.jsonl.gz)`: compression and format come from the first bytes."""
    data = docs_jsonl(16)
    if as_list:
        data = json.dumps([json.loads(line) for line in data.splitlines()], indent=1).encode()
    path = tmp_path / "pipe"
    os.mkfifo(path)
    writer = write_fifo(path, COMPRESS[compression](data))
    ids, stats = read_with_timeout(str(path))
    writer.join(5)
    assert ids == [f"d{i}" for i in range(16)] and stats.skipped == {}


def test_named_pipe_named_gz_holding_plain_text_is_refused(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    os.mkfifo(path)
    write_fifo(path, docs_jsonl(2))
    with pytest.raises(InputError, match="is named .gz but is not gzip-compressed"):
        read_with_timeout(str(path))


def test_named_pipe_of_parquet_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "docs.parquet")
    with pytest.raises(InputError, match="is a named pipe: Parquet needs a seekable file"):
        read_with_timeout(str(tmp_path / "docs.parquet"))


def test_named_pipe_in_a_folder_is_ignored_not_opened(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(docs_jsonl(2))
    os.mkfifo(tmp_path / "b.jsonl")
    ids, stats = read_with_timeout(str(tmp_path))
    assert ids == ["d0", "d1"]
    assert stats.ignored_files == {"special_file": 1} and stats.skipped == {}


def stdin_of(monkeypatch, data: bytes) -> io.BytesIO:
    buffer = io.BytesIO(data)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(buffer))
    return buffer


@pytest.mark.parametrize("compression", list(COMPRESS))
def test_stdin_dash_is_read_once(monkeypatch, compression):
    buffer = stdin_of(monkeypatch, COMPRESS[compression](docs_jsonl(16)))
    stats = ReadStats()
    assert [r["id"] for r in read_rows("-", stats=stats)] == [f"d{i}" for i in range(16)]
    assert stats.skipped == {} and not buffer.closed  # stdin itself is left open


def test_stdin_json_list_and_skips(monkeypatch):
    stdin_of(monkeypatch, b'[{"id": "a", "text": "x"}, 7, {"id": "b", "text": ' + DEEP_TEXT.encode() + b"}]")
    stats = ReadStats()
    assert [r["id"] for r in read_rows("-", stats=stats)] == ["a"]
    assert stats.skipped == {"not_an_object": 1, "json_too_deep": 1}


@pytest.mark.parametrize(("data", "match"), [
    (b"", "stdin is empty"),
    (b"PAR1\x15\x04", "stdin is a stream holding Parquet: Parquet needs a seekable file"),
    (b"id,text\n1,hello\n", "cannot tell the format of stdin"),
    ("[1]".encode("utf-16"), "UTF-16"),
    (b"\x1f\x8b\x08\x00garbage", "cannot decompress stdin"),
])
def test_stdin_that_cannot_be_read_raises_at_once(monkeypatch, data, match):
    stdin_of(monkeypatch, data)
    with pytest.raises(InputError, match=match):
        read_rows("-")
