"""The configuration of `fineinstructions experiment`: one YAML file for the whole token-for-token comparison.

    output_dir: runs/experiment-cpu
    corpus:    the documents every arm is made from (packaged Wikipedia leads, or any documents source)
    heldout:   the evaluation questions with reference answers (packaged trivia, or a JSONL file)
    pipeline:  pipeline-config sections every generation run shares (generator, run, match, judge, ...)
    arms:      [{name, kind, overrides}]: kind fineinstructions | wrap | nemotron_qa | ipt | documents
    train:     the `train` settings (same preset, tokenizer, initialisation, optimizer and steps for every arm)
    evaluate:  the `evaluate` settings (greedy answers, the judge and its measures)

The first arm is the anchor of the head-to-head (FineInstructions in the ready configs).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from fineinstructions.backends.models import DEFAULT_EMBEDDER
from fineinstructions.config import BackendConfig, Section, _UniqueKeyLoader, apply_assignments, validated
from fineinstructions.errors import ConfigError
from fineinstructions.hashing import json_hash

ARM_KINDS = ("fineinstructions", "wrap", "nemotron_qa", "ipt", "documents")


class CorpusConfig(Section):
    """The source documents of every arm. `wikipedia`: `limit` packaged English Wikipedia leads of
    `min_chars`..`max_chars`, the `near_questions` leads closest to each held-out question first (by the
    embedder, on the lead's title and description; the questions themselves are never given to any generation
    step), then a seeded sample. `path`: the first `limit` documents of a file, folder or `hf:` dataset."""

    kind: Literal["wikipedia", "path"] = "wikipedia"
    path: str | None = None
    text_field: str = "text"
    id_field: str | None = "id"
    limit: int = Field(default=400, ge=1)
    near_questions: int = Field(default=2, ge=0)
    min_chars: int = Field(default=300, ge=0)
    max_chars: int = Field(default=1500, ge=1)
    seed: int = 0
    embedder: str = DEFAULT_EMBEDDER

    @model_validator(mode="after")
    def _path_given(self) -> CorpusConfig:
        if self.kind == "path" and not self.path:
            raise ValueError("a corpus of kind 'path' needs `path`")
        return self


class HeldoutConfig(Section):
    """The evaluation questions. `trivia`: `limit` questions sampled with `seed` from the packaged Red-Trivia
    `lists` (community-written trivia with short answers; questions about computing are left out). `path`: a
    JSONL/JSON/Parquet file or `hf:` dataset with `instruction_field` and `reference_field`."""

    kind: Literal["trivia", "path"] = "trivia"
    path: str | None = None
    lists: list[str] = Field(default=["general"], min_length=1)
    instruction_field: str = "instruction"
    reference_field: str = "reference"
    limit: int = Field(default=100, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _path_given(self) -> HeldoutConfig:
        if self.kind == "path" and not self.path:
            raise ValueError("held-out questions of kind 'path' need `path`")
        return self


class ArmConfig(Section):
    """One arm: a generation run of `kind` (its pipeline config is `pipeline` with `overrides` merged in), or the
    raw documents (`documents`: no generation)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._]{0,63}$")
    kind: Literal["fineinstructions", "wrap", "nemotron_qa", "ipt", "documents"]
    overrides: dict[str, Any] = Field(default_factory=dict)


class ExperimentTrainConfig(Section):
    """`fineinstructions train` settings shared by every arm (see `training.run.TrainConfig`)."""

    model_size: str = "tiny"
    seq_len: int = Field(default=256, ge=8)
    tokens: int | None = Field(default=None, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    warmup_steps: int | None = Field(default=None, ge=0)
    vocab_size: int = Field(default=8192, ge=256)
    tokenizer: str | None = None
    pair_format: Literal["instruction", "chat"] = "instruction"
    seeds: int = Field(default=3, ge=1)
    seed: int = 0
    eval_fraction: float = Field(default=0.02, ge=0, lt=0.5)
    device: str = "auto"
    dtype: str = "auto"


class ExperimentEvaluateConfig(Section):
    """`fineinstructions evaluate` settings (see `evaluation.run.EvaluationSettings`)."""

    max_new_tokens: int = Field(default=64, ge=1)
    batch_size: int = Field(default=16, ge=1)
    judge: BackendConfig | None = Field(default_factory=BackendConfig)
    judge_mode: Literal["pairwise", "single", "both", "reference", "all"] = "all"
    judge_max_tokens: int = Field(default=32, ge=1)
    judge_batch_size: int = Field(default=16, ge=1)
    max_answer_chars: int = Field(default=1500, ge=1)
    bootstrap_resamples: int = Field(default=2000, ge=100)
    threads: int | None = Field(default=None, ge=1)
    device: str = "auto"
    seed: int = 0


class ExperimentConfig(Section):
    """Everything `fineinstructions experiment` runs (see the module docstring)."""

    output_dir: str
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig)
    pipeline: dict[str, Any] = Field(default_factory=dict)
    arms: list[ArmConfig] = Field(min_length=2)
    train: ExperimentTrainConfig = Field(default_factory=ExperimentTrainConfig)
    evaluate: ExperimentEvaluateConfig = Field(default_factory=ExperimentEvaluateConfig)

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, arms: list[ArmConfig]) -> list[ArmConfig]:
        names = [a.name for a in arms]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"arm names must differ; repeated: {', '.join(repeated)}")
        return arms

    @field_validator("pipeline")
    @classmethod
    def _no_owned_sections(cls, pipeline: dict[str, Any]) -> dict[str, Any]:
        owned = sorted({"documents", "recipe"} & set(pipeline))
        if owned:
            raise ValueError(f"{', '.join(owned)} are set by the experiment for every run (corpus, arms)")
        return pipeline

    @classmethod
    def from_yaml(cls, path: str | Path, assignments: tuple[str, ...] | list[str] = ()) -> ExperimentConfig:
        """The experiment in a YAML file, with `section.key=value` assignments applied before validation."""
        path = Path(path)
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read experiment config {path}: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"experiment config {path} must be a YAML mapping")
        return validated(cls, apply_assignments(raw, list(assignments)), f"experiment config {path}")

    def fingerprint(self) -> str:
        return json_hash(self.model_dump(mode="json"))

    def arm_pipeline(self, arm: ArmConfig, documents: str, output_dir: str) -> dict[str, Any]:
        """The pipeline config (as plain values) of one arm's generation run: the shared sections, the arm's
        overrides merged in, the corpus as documents, the arm's recipe, and its output folder."""
        data = merge(copy.deepcopy(self.pipeline), arm.overrides)
        data["documents"] = {"kind": "path", "path": documents, "text_field": "text", "id_field": "id",
                             "title_field": "title"}
        data["recipe"] = arm.kind
        data.setdefault("run", {})["output_dir"] = output_dir
        return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, mapping by mapping (an override's non-mapping value replaces)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
