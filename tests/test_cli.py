"""The command line: a help page per subcommand, clear errors, and stages chained through Parquet."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fineinstructions.cli import app
from fineinstructions.io.writers import read_records
from fineinstructions.records import Match, Template

runner = CliRunner()
SUBCOMMANDS = ["demo", "run", "templatize", "index", "match", "instantiate", "judge", "filter", "summary",
               "models", "sources"]


def test_every_subcommand_has_a_help_page():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output
        page = runner.invoke(app, [name, "--help"])
        assert page.exit_code == 0, page.output
        assert "Usage" in page.output


def test_missing_input_and_bad_config_are_clear_errors(tmp_path):
    result = runner.invoke(app, ["templatize", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "input not found" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("queries: {kind: path}\ndocuments: {kind: wikipedia}\n")
    result = runner.invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2 and "needs `path`" in result.output


def test_models_list_and_sources_export(tmp_path):
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "qwen2.5-coder-1.5b-instruct" in result.output
    out = tmp_path / "docs.jsonl"
    result = runner.invoke(app, ["sources", "wikipedia", "--output", str(out), "--n", "3"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["document_id"].startswith("wiki-") for r in rows)


def test_index_and_match_chain_through_parquet(tmp_path):
    from fineinstructions.io.writers import write_records

    templates = [
        Template(template_id="t-rain", template="What causes <fi>weather phenomenon</fi>?",
                 compatible_document_description="A science article about rain, clouds and weather phenomena."),
        Template(template_id="t-city", template="What is the population of <fi>city</fi>?",
                 compatible_document_description="An article about a city, its history and its population."),
    ]
    write_records(tmp_path / "templates" / "shard-00000.parquet", templates, Template)
    result = runner.invoke(app, ["index", str(tmp_path / "templates"), "--output", str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d1", "text": "Rain is liquid water in the form of droplets that have "
                                "condensed from atmospheric water vapor and then become heavy enough to fall "
                                "under gravity. Rain is a major component of the water cycle."}) + "\n")
    result = runner.invoke(app, ["match", str(docs), "--index", str(tmp_path / "index"), "--output",
                                 str(tmp_path / "matches"), "--top-k", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    matches = read_records(tmp_path / "matches", Match)
    assert [m.template_id for m in matches] == ["t-rain", "t-city"]
    assert matches[0].score > matches[1].score and matches[0].text.startswith("Rain is liquid")


def test_index_shards_and_kinds_from_the_command_line(tmp_path):
    from fineinstructions.io.writers import write_records

    templates = [Template(template_id=f"t{i}", template=f"What is <fi>thing {i}</fi>?",
                          compatible_document_description=text)
                 for i, text in enumerate(["A recipe for bread.", "A biography of a painter.",
                                           "A bicycle repair guide."])]
    write_records(tmp_path / "templates" / "shard-00000.parquet", templates, Template)
    result = runner.invoke(app, ["index", str(tmp_path / "templates"), "--output", str(tmp_path / "idx"),
                                 "--shards", "2", "--kind", "Flat"])
    assert result.exit_code == 0, result.output
    assert "index (sharded): 3 templates" in result.output
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.json", "shard-00000", "shard-00001"]
    result = runner.invoke(app, ["index", str(tmp_path / "templates"), "--output", str(tmp_path / "bad"),
                                 "--kind", "NoSuchIndex7"])
    assert result.exit_code != 0 and "not a FAISS index factory string" in result.output
    assert not (tmp_path / "bad").exists()
    for shard in ("shard-00000", "shard-00001"):
        shard_meta = tmp_path / "idx" / shard / "index.json"
        data = json.loads(shard_meta.read_text())
        shard_meta.write_text(json.dumps(data | {"embedder_fingerprint": "0" * 16}))
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d1", "text": "Bread is baked from flour and water. " * 5}) + "\n")
    result = runner.invoke(app, ["match", str(docs), "--index", str(tmp_path / "idx"), "--output",
                                 str(tmp_path / "m"), "--quiet"])
    assert result.exit_code != 0 and "rebuild it or query it with the same model" in " ".join(result.output.split())


@pytest.mark.model
def test_templatize_subcommand_with_the_real_model(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "What is the capital of Peru?"}) + "\n")
    result = runner.invoke(app, ["templatize", str(queries), "--output", str(tmp_path / "t"),
                                 "--model", "smollm2-135m-instruct", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "templatize: 1 in" in result.output
    assert (tmp_path / "t" / "stats" / "shard-000000.json").is_file()
    assert len(read_records(tmp_path / "t", Template)) <= 1


def test_run_with_execution_overrides_and_a_bad_executor(tmp_path):
    import yaml

    from tests.test_pipeline import config_for

    cfg = config_for(tmp_path)
    config = tmp_path / "run.yaml"
    data = cfg.model_dump(mode="json")
    data["generator"] = {"kind": "custom", "model": "tests.scripted_backend:make"}
    config.write_text(yaml.safe_dump(data))
    bad = runner.invoke(app, ["run", "--config", str(config), "--executor", "spark", "-q"])
    assert bad.exit_code == 2 and "executor" in bad.output
    result = runner.invoke(app, ["run", "--config", str(config), "--workers", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "dataset").is_dir()
    # The execution settings are not part of the fingerprint: resuming with others is not refused.
    again = runner.invoke(app, ["run", "--config", str(config), "--workers", "1", "-q"])
    assert again.exit_code == 0, again.output


def test_models_convert_reuses_the_cached_folder_and_refuses_unknown_names():
    pytest.importorskip("gguf")
    result = runner.invoke(app, ["models", "convert", "smollm2-135m-instruct"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct-hf" in result.output.replace("\n", "")
    bad = runner.invoke(app, ["models", "convert", "no-such-model"])
    assert bad.exit_code == 2 and "neither a registry model" in bad.output.replace("\n", " ")


def test_a_bug_inside_a_stage_keeps_its_traceback_and_an_expected_failure_is_one_line(tmp_path, monkeypatch):
    from fineinstructions.stages.query_filter import QueryFilterStage

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "What is the capital of Peru?"}) + "\n")

    def broken(self, batch):
        return list(zip(batch, [], strict=True))  # a programming error: lengths differ

    monkeypatch.setattr(QueryFilterStage, "process", broken)
    result = runner.invoke(app, ["templatize", str(queries), "--output", str(tmp_path / "t")])
    assert isinstance(result.exception, ValueError) and "zip()" in str(result.exception)
    assert result.exit_code == 1 and "error:" not in result.output  # not swallowed into a one-line message
    result = runner.invoke(app, ["templatize", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "t")])
    assert result.exit_code == 2 and result.output.startswith("error:")


def test_set_overrides_reach_the_run_and_a_bad_one_is_a_clear_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("queries: {kind: sharegpt}\ndocuments: {kind: wikipedia}\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--set", "match.top_kk=3"])
    assert result.exit_code == 2 and "match.top_kk" in result.output
    result = runner.invoke(app, ["run", "--config", str(config), "--set", "judge.min_score=9"])
    assert result.exit_code == 2 and "judge.min_score" in result.output
    result = runner.invoke(app, ["run", "--config", str(config), "--set", "run.output_dir=.", "--quiet"])
    assert result.exit_code == 2 and "not the current directory" in " ".join(result.output.split())


def test_stage_flags_fill_the_config_section_and_unset_ones_keep_its_defaults(tmp_path, monkeypatch):
    import fineinstructions.cli as cli

    seen = {}

    def capture(stage, records, output, sections, quiet, index_dir=None):
        seen[stage] = cli.stage_config(sections)
        return []

    monkeypatch.setattr(cli, "_run_stage", capture)
    docs = tmp_path / "d.jsonl"
    docs.write_text(json.dumps({"id": "d1", "text": "Bread is baked from flour and water. " * 5}) + "\n")
    result = runner.invoke(app, ["match", str(docs), "--index", str(tmp_path), "--output", str(tmp_path / "m"),
                                 "--per-vector-k", "20", "--max-windows", "8", "--min-document-words", "5",
                                 "--max-document-chars", "5000", "--max-template-uses", "0", "--sigma", "0.1"])
    assert result.exit_code == 0, result.output
    match = seen["match"].match
    assert (match.per_vector_k, match.max_windows, match.min_document_words, match.max_document_chars) == \
        (20, 8, 5, 5000)
    assert match.max_template_uses is None and match.sigma == 0.1
    assert match.top_k == type(match)().top_k and match.mmr_lambda == type(match)().mmr_lambda  # config defaults


def test_a_baseline_recipe_runs_from_the_command_line_without_queries(tmp_path):
    documents = tmp_path / "d.jsonl"
    documents.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i} tells of bridge {i}. It opened in "
                                             f"19{i}0 and carried trams until 1950."}) + "\n" for i in range(3)))
    config = tmp_path / "c.yaml"
    config.write_text(f"documents: {{path: {documents}}}\n"
                      "generator: {kind: custom, model: 'tests.scripted_backend:recipes'}\n"
                      f"run: {{output_dir: {tmp_path / 'run'}}}\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--set", "recipe=ipt", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Recipe ipt" in result.output and "texts" in result.output
