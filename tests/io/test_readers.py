from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.io.readers import InputError, ReadStats, first_user_turn, read_rows, rows_to_records
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
    from fineinstructions.io.readers import rows_to_templates

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
