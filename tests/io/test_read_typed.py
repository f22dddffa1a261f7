"""`read_typed`: any readable input to records of one type, typed rows validated and plain rows mapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineinstructions.io.readers import InputError, ReadStats
from fineinstructions.io.rows import read_typed
from fineinstructions.io.writers import write_records
from fineinstructions.records import Document, Match, Pair, Query, Template


def jsonl(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pair(i: int) -> Pair:
    return Pair(document_id=f"d{i}", template_id="t", text=f"Document {i}.", template="What is <fi>x</fi>?",
                instantiated_instruction=f"What is {i}?", answer=f"It is {i}.", judge_score=5)


def test_plain_jsonl_rows_become_queries_and_documents(tmp_path):
    path = jsonl(tmp_path / "web.jsonl", {"text": "What is a cat?", "id": 7, "title": "Cats"},
                 {"text": "How do bees fly?"})
    queries: list[Query] = read_typed(path, Query)
    assert [(q.query_id, q.text, q.source) for q in queries] == [("7", "What is a cat?", "web"),
                                                                  ("web-1", "How do bees fly?", "web")]
    documents: list[Document] = read_typed(str(path), Document, limit=1)
    assert [(d.document_id, d.title) for d in documents] == [("7", "Cats")]

    named = jsonl(tmp_path / "named.jsonl", {"body": "A page.", "url": "u1", "meta": {"name": "Home"}})
    documents = read_typed(named, Document, text_field="body", id_field="url", title_field="meta.name",
                           source_name="crawl")
    assert documents == [Document(document_id="u1", text="A page.", title="Home", source="crawl")]


def test_typed_rows_are_validated_not_mapped(tmp_path):
    path = jsonl(tmp_path / "q.jsonl", {"query_id": "q1", "text": "Why?", "source": "sharegpt"})
    assert read_typed(path, Query) == [Query(query_id="q1", text="Why?", source="sharegpt")]
    # Naming a field asks for the plain mapping, even for rows that carry the schema.
    assert [q.query_id for q in read_typed(path, Query, id_field="source")] == ["sharegpt"]


def test_typed_parquet_pairs_round_trip_and_can_leave_columns_unread(tmp_path):
    pairs = [pair(i) for i in range(3)]
    write_records(tmp_path / "dataset" / "part-00000.parquet", pairs, Pair)
    stats = ReadStats()
    assert read_typed(tmp_path / "dataset", Pair, stats=stats) == pairs
    assert stats.rows == 3 and not stats.skipped
    light = read_typed(tmp_path / "dataset" / "part-00000.parquet", Pair, without=("text",), limit=2)
    assert [p.text for p in light] == ["", ""]
    assert [p.answer for p in light] == ["It is 0.", "It is 1."]


def test_finetemplates_rows_and_our_own_templates(tmp_path):
    released = jsonl(tmp_path / "finetemplates.jsonl",
                     {"template_id": 7, "template": "What is <fi>concept</fi>?",
                      "compatible_document_description": "An article.", "popularity": 3},
                     {"instruction_template": "How do I <fi>task</fi>?", "document_description": "A guide."},
                     {"template": "No variables", "compatible_document_description": "x"})
    stats = ReadStats()
    templates: list[Template] = read_typed(released, Template, stats=stats)
    assert [(t.template_id, t.variables, t.popularity) for t in templates][0] == ("7", ["concept"], 3)
    assert templates[1].template_id.startswith("tpl-")
    assert stats.skipped == {"invalid_template_no_variables": 1}

    ours = Template(template_id="tpl-1", template="Who was <fi>person</fi>?", compatible_document_description="A bio.",
                    variables=["person"], model_id="qwen", prompt_version="v2", completion_tokens=40)
    write_records(tmp_path / "bank.parquet", [ours], Template)
    assert read_typed(tmp_path / "bank.parquet", Template) == [ours]  # every column kept, not re-derived


def test_bad_rows_are_counted_with_reasons(tmp_path):
    matches = jsonl(tmp_path / "matches.jsonl",
                    {"document_id": "d1", "template_id": "t1", "score": 0.5, "rank": 0},
                    {"document_id": "d2", "template_id": "t1", "score": "high", "rank": 1},
                    {"document_id": "d3", "rank": 2, "score": 0.1})
    with matches.open("a") as handle:
        handle.write("{broken\n")
    stats = ReadStats()
    assert [m.document_id for m in read_typed(matches, Match, stats=stats)] == ["d1"]
    assert stats.skipped == {"invalid_score": 1, "invalid_template_id": 1, "malformed_json": 1}

    queries = jsonl(tmp_path / "q.jsonl", {"text": "ok", "id": "a"}, {"body": "no text"}, {"text": "dup", "id": "a"})
    stats = ReadStats()
    assert [q.text for q in read_typed(queries, Query, stats=stats)] == ["ok"]
    assert stats.skipped == {"missing_text": 1, "duplicate_id": 1}


def test_inputs_that_cannot_be_read_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_typed(tmp_path / "missing.jsonl", Query)
    (tmp_path / "data.xyz").write_text("?")
    with pytest.raises(InputError, match="unknown input format"):
        read_typed(tmp_path / "data.xyz", Pair)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files"):
        read_typed(tmp_path / "empty", Document)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="Parquet"):
        read_typed(tmp_path / "bad.parquet", Pair, limit=0)  # raised before the limit is looked at


def test_an_input_without_usable_rows_gives_no_records(tmp_path):
    path = jsonl(tmp_path / "q.jsonl", {"body": "x"})
    stats = ReadStats()
    assert read_typed(path, Query, stats=stats) == []
    assert stats.skipped == {"missing_text": 1}
