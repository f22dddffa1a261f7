"""Instruction sets: held-out pairs, other files and hf: datasets (a local folder here), fields, limits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineinstructions.evaluation.heldout import (
    EvaluationInputError,
    field_value,
    heldout_path,
    item_id,
    load_instructions,
)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_heldout_rows_with_references_duplicates_and_a_seeded_limit(tmp_path: Path):
    rows = [{"instruction": f"Question {k}?", "reference": f"Answer {k}.", "document_id": f"d{k}", "text": "..."}
            for k in range(10)]
    rows += [{"instruction": "Question 3?", "reference": "again"}, {"reference": "no instruction"},
             {"instruction": "Without a reference?"}]
    path = _jsonl(tmp_path / "heldout.jsonl", rows)
    assert heldout_path(tmp_path) == path
    full = load_instructions(path)
    assert len(full.items) == 11 and full.rows_read == 13
    assert full.skipped == {"duplicate_instruction": 1, "missing_instruction": 1}
    assert full.items[0].reference == "Answer 0." and full.items[0].extra == {"document_id": "d0"}
    assert full.items[-1].reference is None and full.describe()["with_reference"] == 10
    assert full.items[2].item_id == item_id("Question 2?")
    sample = load_instructions(path, limit=4, seed=1)
    assert len(sample.items) == 4 and sample.items == load_instructions(path, limit=4, seed=1).items
    assert sample.items != load_instructions(path, limit=4, seed=2).items
    order = [i.instruction for i in full.items]
    assert [order.index(i.instruction) for i in sample.items] == sorted(order.index(i.instruction)
                                                                       for i in sample.items)
    only = load_instructions(path, reference_required=True)
    assert len(only.items) == 10 and only.skipped["missing_reference"] == 1


def test_benchmark_style_fields_and_an_hf_dataset_folder(tmp_path: Path):
    assert field_value({"history": [{"user": "Hi", "bot": "Hello"}]}, "history.0.user") == "Hi"
    assert field_value({"a": {"b": 1}}, "a.c") is None and field_value({"x.y": 2}, "x.y") == 2
    assert field_value({"turns": ["one"]}, "turns.3") is None
    folder = tmp_path / "alpaca_eval"
    folder.mkdir()
    # AlpacaEval's fields: instruction, output (the reference), generator, dataset
    _jsonl(folder / "test.jsonl", [{"instruction": "Name a fruit.", "output": "An apple.", "generator": "gpt4"},
                                   {"instruction": "Name a colour.", "output": "Blue.", "generator": "gpt4"}])
    loaded = load_instructions(f"hf:{folder}", reference_field="output", split="test")
    assert [(i.instruction, i.reference) for i in loaded.items] == [("Name a fruit.", "An apple."),
                                                                    ("Name a colour.", "Blue.")]
    mt = _jsonl(tmp_path / "mtbench101.jsonl", [{"id": 1, "task": "CM", "history": [
        {"user": "What is 2+2?", "bot": "4."}, {"user": "And 3+3?", "bot": "6."}]}])
    first_turns = load_instructions(mt, "history.0.user", "history.0.bot")
    assert first_turns.items[0].instruction == "What is 2+2?" and first_turns.items[0].reference == "4."
    mix = _jsonl(tmp_path / "mixeval.jsonl", [{"prompt": "Capital of Peru?", "target": ["Lima", "lima"]}])
    assert load_instructions(mix, "prompt", "target.0").items[0].reference == "Lima"


def test_bad_instruction_sets_are_clear_errors(tmp_path: Path):
    with pytest.raises(EvaluationInputError, match="its fields are: question"):
        load_instructions(_jsonl(tmp_path / "q.jsonl", [{"question": "Why?"}]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvaluationInputError, match="cannot read|empty"):
        load_instructions(empty)
    with pytest.raises(EvaluationInputError, match="not found"):
        load_instructions(tmp_path / "missing.jsonl")
    with pytest.raises(EvaluationInputError, match="no heldout.jsonl"):
        heldout_path(tmp_path)
    with pytest.raises(EvaluationInputError, match="--limit"):
        load_instructions(_jsonl(tmp_path / "ok.jsonl", [{"instruction": "x"}]), limit=0)
    blank = _jsonl(tmp_path / "blank.jsonl", [{"instruction": "  "}, {"instruction": None}])
    with pytest.raises(EvaluationInputError, match="instruction field"):
        load_instructions(blank)
