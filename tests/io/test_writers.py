from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from fineinstructions.io.atomic import atomic_dir, atomic_path
from fineinstructions.io.writers import read_records, write_records, write_rows
from fineinstructions.records import Pair, Query


def test_records_round_trip_with_schema(tmp_path):
    queries = [Query(query_id=str(i), text=f"q{i}", source="s") for i in range(3)]
    path = write_records(tmp_path / "out" / "q.parquet", queries, Query)
    table = pq.read_table(path)
    assert table.schema.equals(Query.arrow_schema(), check_metadata=False)
    assert read_records(path, Query) == queries
    assert read_records(tmp_path / "out", Query) == queries


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_whole(tmp_path):
    target = tmp_path / "q.parquet"
    write_records(target, [Query(query_id="1", text="old")], Query)
    write_records(target, [Query(query_id="2", text="new")], Query)
    assert [q.text for q in read_records(target, Query)] == ["new"]


def test_rows_of_different_shapes_share_one_file(tmp_path):
    path = write_rows(tmp_path / "r.parquet", [{"reason": "a", "n": 1}, {"reason": "b", "extra": {"k": 1}}])
    rows = pq.read_table(path).to_pylist()
    assert rows[0]["reason"] == "a" and rows[1]["extra"] == '{"k": 1}'


def test_pair_schema_keeps_released_columns():
    names = set(Pair.arrow_schema().names)
    assert {"template_id", "text", "instantiated_instruction", "answer", "synthetic_token_count",
            "token_count", "document_id", "judge_score", "judge_feedback", "excerpt_coverage",
            "instantiator_model", "judge_model", "instantiate_prompt_version", "config_fingerprint"} <= names


def test_atomic_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("died mid-write")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary folder left behind


def test_read_records_can_leave_text_columns_unread(tmp_path):
    from fineinstructions.io.writers import read_records, write_records
    from fineinstructions.records import Pair

    pair = Pair(document_id="d", template_id="t", text="a long document " * 100, template="What is <fi>x</fi>?",
                instantiated_instruction="What is it?", answer="It is.", judge_score=5)
    write_records(tmp_path / "p.parquet", [pair], Pair)
    light = read_records(tmp_path / "p.parquet", Pair, without=("text",))
    assert light[0].text == "" and light[0].answer == "It is." and light[0].judge_score == 5
    assert read_records(tmp_path / "p.parquet", Pair)[0].text == pair.text
