"""A baseline recipe as a whole run: documents in ranks through the recipe's stage, resumable, its texts in
sized dataset parts that load as one dataset, and a summary of what it made."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fineinstructions.config import BackendConfig, PipelineConfig, RunConfig, SourceConfig
from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.pipeline import Pipeline
from fineinstructions.records import SyntheticText

RECIPES = BackendConfig(kind="custom", model="tests.scripted_backend:recipes")


def recipe_config(tmp_path: Path, recipe: str, out: str, ranks: int = 1, workers: int = 1) -> PipelineConfig:
    docs = tmp_path / "documents.jsonl"
    leads = [d for d in wikipedia_documents() if 400 <= len(d.text) <= 1500][:12]
    docs.write_text("".join(json.dumps({"id": d.document_id, "text": d.text}) + "\n" for d in leads))
    cfg = PipelineConfig(documents=SourceConfig(path=str(docs)), generator=RECIPES, recipe=recipe,  # type: ignore[arg-type]
                         run=RunConfig(output_dir=str(tmp_path / out), shard_size=4, batch_size=2, ranks=ranks,
                                       workers=workers, part_rows=5))
    cfg.wrap.chunk_tokens = 60
    return cfg


def texts(cfg: PipelineConfig) -> list[dict]:
    """The dataset's rows, without the fingerprint (`run.ranks` is part of it)."""
    parts = sorted(Path(cfg.run.output_dir, "dataset").glob("rank-*/part-*.parquet"))
    return [row for part in parts for row in pq.read_table(part).drop_columns(["config_fingerprint"]).to_pylist()]


@pytest.mark.parametrize("recipe", ["wrap", "nemotron_qa", "ipt"])
def test_a_recipe_runs_in_ranks_and_resumes_without_recomputing(tmp_path, recipe):
    one = recipe_config(tmp_path, recipe, "one")
    summary = Pipeline(one, show_progress=False).run()
    two = recipe_config(tmp_path, recipe, "two", ranks=2, workers=2)
    Pipeline(two, show_progress=False).run()
    rows = texts(one)
    assert rows and sorted(map(json.dumps, rows)) == sorted(map(json.dumps, texts(two)))
    assert {r["recipe"] for r in rows} == {recipe} and all(r["token_count"] > 0 for r in rows)
    quality = summary["quality"]
    assert summary["recipe"] == recipe and quality["texts"] == len(rows)
    assert quality["documents_with_texts"] == 12 and quality["synthetic_tokens"] == sum(r["token_count"] for r in rows)
    assert summary["stages"][recipe]["requests"] >= 12 and "match" not in summary["stages"]
    if recipe == "wrap":
        dropped = summary["stages"]["wrap"]["dropped"]
        assert quality["chunks"] > 12  # ~60-token chunks: several per lead
        assert len(rows) == quality["chunks"] - sum(dropped.values()) and set(dropped) <= {"too_short"}
    else:
        assert len(rows) == 12 and all(r["items"] >= 1 for r in rows)
    again = Pipeline(one, show_progress=False).run()  # resumed: every shard is read back, no engine call
    assert again["stages"][recipe]["requests"] == summary["stages"][recipe]["requests"]
    assert texts(one) == rows
    assert all(pq.read_metadata(p).num_rows <= 5 for p in Path(one.run.output_dir, "dataset").rglob("*.parquet"))
    assert pq.read_schema(next(Path(one.run.output_dir, "dataset").rglob("*.parquet"))).names == \
        SyntheticText.arrow_schema().names


def test_a_recipe_needs_no_queries_and_ignores_fineinstructions_settings(tmp_path):
    cfg = recipe_config(tmp_path, "nemotron_qa", "a")
    other = recipe_config(tmp_path, "nemotron_qa", "b")
    other.match.top_k = 9  # not part of what a recipe run makes
    assert cfg.fingerprint() == other.fingerprint()
    other.nemotron_qa.max_pairs = 3
    assert cfg.fingerprint() != other.fingerprint()
    datasets = pytest.importorskip("datasets")
    Pipeline(cfg, show_progress=False).run()
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "a" / "dataset"), split="train")
    assert loaded.num_rows == 12 and "text" in loaded.column_names
