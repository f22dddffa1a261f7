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
