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
