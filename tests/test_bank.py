"""Building a template bank (`Pipeline.build_bank`, `fineinstructions bank`) and running on a packaged one."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.cli import app
from fineinstructions.config import SourceConfig
from fineinstructions.io import sources
from fineinstructions.io.readers import InputError
from fineinstructions.pipeline import Pipeline
from tests.test_pipeline import config_for, run_scripted, scripted


def scripted_backend() -> FakeBackend:
    """The scripted engine as a `custom` backend factory (for the CLI)."""
    return FakeBackend(scripted, model_id="scripted")


def build(cfg, output, force=False):
    pipeline = Pipeline(cfg, show_progress=False, force=force)
    backend = scripted_backend()
    pipeline.backends.register(cfg.generator, backend)
    return pipeline.build_bank(output), backend


def test_a_bank_holds_the_queries_templates_with_provenance_and_resumes_without_model_calls(tmp_path):
    cfg = config_for(tmp_path, out="bank-run")
    output = tmp_path / "banks" / "mine.parquet"
    manifest, backend = build(cfg, output)
    table = pq.read_table(output)
    assert "query" not in table.column_names  # the queries' text stays in their source; ids say which
    rows = table.to_pylist()
    assert rows and len(rows) == manifest["templates"]
    assert all(r["query_id"] and "<fi>" in r["template"] and r["variables"] for r in rows)
    assert [r["template_id"] for r in rows] == sorted(r["template_id"] for r in rows)
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["fingerprint"] == cfg.fingerprint() and saved["prompt_version"] == "v2"
    assert saved["funnel"]["templatize"]["rows_out"] >= len(rows)  # template dedup may merge a few
    assert saved["funnel"]["query_filter"]["dropped"]  # the inputs hold a duplicate query
    calls = len(backend.calls)
    assert calls > 0
    again, backend = build(cfg, output)
    assert backend.calls == [] and again["templates"] == manifest["templates"]
    assert pq.read_table(output).equals(table)


def test_a_run_matches_against_a_packaged_bank_and_its_own_queries_templates(tmp_path, monkeypatch):
    bank_cfg = config_for(tmp_path, out="bank-run")
    banks = tmp_path / "banks"
    build(bank_cfg, banks / "tiny.parquet")
    monkeypatch.setattr(sources, "BANKS_DIR", banks)
    bank_ids = set(pq.read_table(banks / "tiny.parquet").column("template_id").to_pylist())

    cfg = config_for(tmp_path, out="run")
    cfg.templates = SourceConfig(kind="bank", path="tiny")
    summary, _ = run_scripted(cfg)
    # The same queries templatized live give the same templates: the live ones come first and the bank's
    # copies leave as duplicates, so the index holds each once.
    assert summary["stages"]["templatize"]["rows_out"] == len(bank_ids)
    assert summary["stages"]["template_dedup"]["dropped"].get("duplicate_template") == len(bank_ids)
    assert summary["index"]["templates"] == len(bank_ids)


def test_an_unknown_packaged_bank_names_the_packaged_ones(tmp_path, monkeypatch):
    (tmp_path / "one.parquet").write_bytes(b"")
    monkeypatch.setattr(sources, "BANKS_DIR", tmp_path)
    with pytest.raises(InputError, match="no packaged template bank 'two' \\(packaged: one\\)"):
        sources.bank_file("two")


def test_the_bank_command_builds_from_a_config_file(tmp_path):
    cfg = config_for(tmp_path, out="cli-run")
    cfg.generator.kind = "custom"
    cfg.generator.model = "tests.test_bank:scripted_backend"
    config = tmp_path / "bank.yaml"
    config.write_text(cfg.to_yaml())
    output = tmp_path / "cli.parquet"
    result = CliRunner().invoke(app, ["bank", "--config", str(config), "--output", str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "templates from" in result.output and output.is_file() and output.with_suffix(".json").is_file()


def test_the_packaged_bank_is_valid_and_says_how_it_was_made():
    path = sources.bank_file()
    table = pq.read_table(path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert table.num_rows == manifest["templates"]
    assert len(set(table.column("template_id").to_pylist())) == table.num_rows
    assert manifest["engine"] and manifest["model"] and manifest["prompt_version"]
    assert all(q.startswith("sharegpt-") for q in table.column("query_id").to_pylist())
