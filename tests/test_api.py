"""The Python API: the pipeline from a config, and each stage on a list of dicts, a pyarrow.Table or a
Hugging Face Dataset, with the scripted backend and with the real 135M model."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from datasets import Dataset

import fineinstructions as fi
from fineinstructions.backends.fake import FakeBackend
from fineinstructions.errors import ConfigError
from fineinstructions.io.writers import read_records
from fineinstructions.prompts import PromptError
from fineinstructions.records import Pair
from tests.test_pipeline import DOCUMENTS, QUERIES, config_for, scripted

ROWS = [{"text": q} for q in QUERIES] + [{"title": "no text field"}]


def scripted_engine() -> FakeBackend:
    return FakeBackend(scripted, model_id="scripted")


def test_templatize_on_a_list_of_dicts_returns_dicts_and_the_rejected_rows_with_reasons():
    out = fi.run_stage("templatize", ROWS, engine=scripted_engine())
    assert isinstance(out.rows, list) and all(isinstance(r, dict) for r in out.rows)
    assert {r["template"] for r in out.rows} >= {"What is acid <fi>rain or similar topic</fi>?"}
    reasons = {r["reason"].split(":")[0] for r in out.rejected}
    assert "missing_text" in reasons  # the row without a text field, with its reason
    assert "invalid_output" in reasons or "unparseable_output" in reasons or len(out.rejected) >= 2  # the joke
    assert out.stats["rows_in"] == len(QUERIES) and out.stats["requests"] >= len(QUERIES)


def test_query_filter_on_a_dataset_returns_a_dataset():
    data = Dataset.from_list([{"text": "What is acid rain?"}, {"text": "what is acid rain"}, {"text": "hi"}])
    out = fi.run_stage("query_filter", data)
    assert isinstance(out.rows, Dataset) and isinstance(out.rejected, Dataset)
    assert out.rows["text"] == ["What is acid rain?"]
    assert sorted(r.split(":")[0] for r in out.rejected["reason"]) == ["duplicate_query", "query_too_short"]


def test_a_pyarrow_table_comes_back_as_a_table_and_overrides_reach_the_stage():
    table = pa.Table.from_pylist([{"text": q} for q in QUERIES])
    out = fi.run_stage("query_filter", table, overrides=["query_filter.min_chars=20"])
    assert isinstance(out.rows, pa.Table)
    assert all(len(t) >= 20 for t in out.rows.column("text").to_pylist())
    assert out.rejected.num_rows >= 1


def test_a_prompt_file_given_by_path_is_used(tmp_path):
    from importlib import resources

    packaged = resources.files("fineinstructions.prompts").joinpath("judge.v2.yaml").read_text()
    mine = tmp_path / "my_judge.yaml"
    mine.write_text(packaged.replace("version: judge-v2", "version: mine-1", 1).replace(
        "You are a strict judge", "You are a strict judge (custom prompt)", 1))
    judged = []

    def respond(conversation):
        judged.append(conversation[0]["content"])
        return "<feedback>Fine.</feedback><score>4</score>"

    pair = {"document_id": "d1", "template_id": "t1", "text": DOCUMENTS[0][1],
            "template": "What is <fi>x</fi>?", "instantiated_instruction": "What is acid rain?",
            "answer": "Acid rain is rain that is unusually acidic.", "answer_with_markers": "x"}
    pairs = _pairs_like(pair)
    out = fi.run_stage("judge", pairs, overrides=[f"judge.prompt_file={mine}"],
                       engine=FakeBackend(respond, model_id="scripted"))
    assert judged and judged[0].startswith("You are a strict judge (custom prompt)")
    assert out.rows[0]["judge_score"] == 4 and out.rows[0]["judge_prompt_version"] == "mine-1"


def test_a_prompt_file_that_does_not_fit_its_stage_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: judge\nversion: x\nsystem: s\nuser: '{query}'\n")
    with pytest.raises(PromptError, match="user message"):
        fi.run_stage("judge", [], overrides=[f"judge.prompt_file={bad}"])


def test_not_rows_is_a_clear_error():
    with pytest.raises(ConfigError, match="list of dicts"):
        fi.run_stage("query_filter", "What is acid rain?")
    with pytest.raises(ConfigError, match="unknown stage"):
        fi.run_stage("summarize", [])


def test_run_takes_a_config_object_or_a_yaml_path_with_overrides(tmp_path):
    cfg = config_for(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    cfg.generator = cfg.generator.model_copy(update={"kind": "custom", "model": "tests.scripted_backend:make"})
    path.write_text(cfg.to_yaml())
    summary = fi.run(path, overrides=[f"run.output_dir={tmp_path / 'api-run'}", "match.top_k=1"])
    assert summary["stages"]["match"]["rows_out"] <= 3  # one template per matched document
    assert read_records(tmp_path / "api-run" / "dataset", Pair)
    assert json.loads((tmp_path / "api-run" / "summary.json").read_text())["config_fingerprint"] == \
        fi.load_config(path, [f"run.output_dir={tmp_path / 'api-run'}", "match.top_k=1"]).fingerprint()
    log = (tmp_path / "api-run" / "run.log").read_text()  # every run logs to its folder
    assert "run finished" in log and "skipped" in log  # the malformed query row is in it too


@pytest.mark.model
def test_templatize_and_judge_with_the_real_135m_model(test_gguf):
    overrides = [f"generator.model={test_gguf}", "templatize.max_tokens=80", "judge.max_tokens=60"]
    out = fi.run_stage("templatize", Dataset.from_list([{"text": q} for q in QUERIES[:3]]), overrides=overrides)
    assert isinstance(out.rows, Dataset)
    assert out.stats["requests"] >= 3 and out.stats["completion_tokens"] > 0
    assert len(out.rows) + len({r.split(":")[0] for r in out.rejected["reason"]}) >= 1
    pair = {"document_id": "d1", "template_id": "t1", "text": DOCUMENTS[0][1],
            "template": "What is <fi>x</fi>?", "instantiated_instruction": "What is acid rain?",
            "answer": "Acid rain is rain or any other form of precipitation that is unusually acidic.",
            "answer_with_markers": "x"}
    judged = fi.run_stage("judge", _pairs_like(pair), overrides=overrides)
    assert len(judged.rows) == 1 and judged.stats["requests"] == 1  # the judge never drops a row
    fi.close()


def _pairs_like(pair: dict) -> list[dict]:
    """A full Pair row (every column) from the fields a test cares about."""
    return [Pair.model_validate(pair).model_dump()]
