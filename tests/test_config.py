from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fineinstructions.config import PipelineConfig, demo_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_demo_config_is_the_demo_command():
    from_file = PipelineConfig.from_yaml(CONFIGS / "demo.yaml")
    assert from_file.fingerprint() == demo_config("anywhere").fingerprint()


def test_every_shipped_config_validates():
    for path in CONFIGS.glob("*.yaml"):
        PipelineConfig.from_yaml(path)


def test_fingerprint_ignores_output_folder_but_not_settings():
    a, b = demo_config("x"), demo_config("y")
    assert a.fingerprint() == b.fingerprint()
    b.judge.min_score = 5
    assert a.fingerprint() != b.fingerprint()


def test_unknown_keys_and_bad_values_are_rejected(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("queries: {kind: sharegpt}\ndocuments: {kind: wikipedia}\njudge: {min_scor: 4}\n")
    with pytest.raises(ValidationError, match="min_scor"):
        PipelineConfig.from_yaml(bad)
    bad.write_text("queries: {kind: sharegpt}\ndocuments: {kind: wikipedia}\ngenerator: {kind: openai}\n")
    with pytest.raises(ValidationError, match="base_url"):
        PipelineConfig.from_yaml(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        PipelineConfig.from_yaml(bad)


def test_fingerprint_of_an_unchanged_config_is_what_it_was_before_the_per_stage_settings():
    # Runs made before `<stage>.backend`, `embedder_device`, `revision` existed must still resume.
    assert demo_config("anywhere").fingerprint() == "7855e9e92f06b567"


def test_each_model_stage_takes_its_own_backend_and_defaults_to_the_generator():
    cfg = demo_config("x")
    assert {cfg.backend_for(s).model for s in ("templatize", "instantiate", "judge")} == {cfg.generator.model}
    cfg = PipelineConfig.model_validate({
        "queries": {"kind": "sharegpt"}, "documents": {"kind": "wikipedia"},
        "generator": {"model": "g"},
        "templatize": {"backend": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "t"}},
        "judge": {"backend": {"kind": "vllm", "model": "j"}},
    })
    assert [cfg.backend_for(s).model for s in ("templatize", "instantiate", "judge")] == ["t", "g", "j"]
    older = PipelineConfig.model_validate({"queries": {"kind": "sharegpt"}, "documents": {"kind": "wikipedia"},
                                           "judge_backend": {"model": "old-judge"}})
    assert older.backend_for("judge").model == "old-judge"
    with pytest.raises(ValidationError, match="once"):
        PipelineConfig.model_validate({"queries": {"kind": "sharegpt"}, "documents": {"kind": "wikipedia"},
                                       "judge_backend": {"model": "a"}, "judge": {"backend": {"model": "b"}}})
    changed = demo_config("x")
    changed.instantiate.backend = changed.generator.model_copy(update={"model": "other"})
    assert changed.fingerprint() != demo_config("x").fingerprint()


def test_embedder_device_and_batch_size_are_execution_settings():
    a, b = demo_config("x"), demo_config("x")
    b.match.embedder_device, b.match.embedder_batch_size = "cuda", 256
    assert a.fingerprint() == b.fingerprint()


def test_a_template_bank_run_needs_no_queries_and_hub_settings_need_an_hf_source():
    cfg = PipelineConfig.model_validate({"templates": {"path": "hf:owner/bank", "revision": "abc123",
                                                       "data_files": {"train": "data/*.parquet"}},
                                         "documents": {"path": "docs.jsonl"}})
    assert cfg.queries is None and cfg.templates is not None and cfg.templates.revision == "abc123"
    with pytest.raises(ValidationError, match="queries"):
        PipelineConfig.model_validate({"documents": {"path": "docs.jsonl"}})
    with pytest.raises(ValidationError, match="hf: sources only"):
        PipelineConfig.model_validate({"queries": {"path": "q.jsonl", "revision": "main"},
                                       "documents": {"path": "docs.jsonl"}})


BASE = "queries: {kind: sharegpt}\ndocuments: {kind: wikipedia}\n"


@pytest.mark.parametrize("extra", ["match: {top_k: '3'}", "run: {shard_size: true}", "match: {top_k: 3.0}",
                                   "generator: {timeout_s: '3'}", "query_filter: {moderation: 'yes'}",
                                   "templatize: {retry_temperature: -1}"])
def test_values_are_not_coerced_and_retry_temperature_is_not_negative(tmp_path, extra):
    bad = tmp_path / "c.yaml"
    bad.write_text(BASE + extra + "\n")
    with pytest.raises(ValidationError):
        PipelineConfig.from_yaml(bad)


def test_yaml_ints_still_fill_float_fields(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text(BASE + "generator: {timeout_s: 3}\nmatch: {sigma: 1}\ntemplatize: {retry_temperature: 0}\n")
    cfg = PipelineConfig.from_yaml(good)
    assert cfg.generator.timeout_s == 3.0 and isinstance(cfg.generator.timeout_s, float) and cfg.match.sigma == 1


def test_a_duplicate_yaml_key_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(BASE + "match:\n  top_k: 3\n  sigma: 0.1\n  top_k: 5\n")
    with pytest.raises(ValueError, match=r"duplicate key 'top_k' on line 6 \(first given on line 4\)"):
        PipelineConfig.from_yaml(bad)
    bad.write_text(BASE + "run: {seed: 1}\nrun: {seed: 2}\n")
    with pytest.raises(ValueError, match="duplicate key 'run' on line 4"):
        PipelineConfig.from_yaml(bad)
    bad.write_text(BASE + "defaults: &d {top_k: 3}\n")  # anchors and merge keys still load (then fail as unknown)
    with pytest.raises(ValidationError, match="defaults"):
        PipelineConfig.from_yaml(bad)
    bad.write_text(BASE + "x: &d {top_k: 3}\nmatch: {<<: *d, top_k: 4}\n")
    with pytest.raises(ValidationError, match="x"):
        PipelineConfig.from_yaml(bad)


def test_request_limits_are_execution_settings_left_out_of_the_fingerprint():
    a, b = demo_config("anywhere"), demo_config("anywhere")
    assert a.generator.request_deadline_s is None and a.generator.max_retry_after_s == 60.0
    b.generator = b.generator.model_copy(update={"request_deadline_s": 30.0, "max_response_bytes": 1024,
                                                 "max_retry_after_s": 5.0})
    assert b.fingerprint() == a.fingerprint() == "7855e9e92f06b567"
    a.judge.backend, b.judge.backend = a.generator, b.generator  # at any depth
    assert b.fingerprint() == a.fingerprint()
