"""Read a run folder (finished or not) into one view: config, per-stage stats, kept pairs and quality figures.

Everything is recomputed from the committed shards (`work/<stage>/shard-N.parquet` with its
`stats/shard-N.json`) and the dataset parts, so a run that is still going, or that crashed, reads the same
way as a finished one; `summary.json` only adds what the shards do not hold (inputs, index, elapsed time).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.records import Pair
from fineinstructions.reporting.floor import ScoreBins, read_score_bins
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.registry import STAGE_ORDER
from fineinstructions.summary import DatasetTally, quality

# Dataset columns the report needs; the document text (the bulk of each row) is never read.
PAIR_COLUMNS = ("document_id", "template_id", "template", "instantiated_instruction", "answer", "excerpt_coverage",
                "excerpt_count", "synthetic_token_count", "token_count", "judge_score", "judge_feedback",
                "instantiator_model", "instantiate_prompt_version", "judge_model", "judge_prompt_version")


class ReportError(FineInstructionsError):
    """The folder is not a run folder, or the request does not fit the run."""


@dataclass
class RunView:
    """What a report or a dataset card shows about one run folder."""

    root: Path
    config: dict[str, Any]
    config_text: str
    fingerprint: str
    summary: dict[str, Any] | None  # summary.json when it belongs to this config, else None (unfinished)
    stages: dict[str, StageStats]
    shards: dict[str, int]  # committed shards per stage
    parts: list[Path]  # dataset/part-N.parquet
    pairs: list[Pair]  # kept pairs without their document text
    instantiated_coverage: list[float]  # excerpt coverage of every pair that passed instantiation
    quality: dict[str, Any] = field(default_factory=dict)
    row_values: dict[str, set[str]] = field(default_factory=dict)  # models and prompt versions on the rows
    index: dict[str, Any] | None = None
    score_bins: ScoreBins | None = None  # candidates, nulls and kept pairs by match score (choosing min_score)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def models(self) -> dict[str, str]:
        """The configured model of each role."""
        generator = self.config.get("generator") or {}

        def model_of(stage: str, *older: str) -> str:
            own = (self.config.get(stage) or {}).get("backend")
            for key in older:
                own = own or self.config.get(key)
            return str((own or generator).get("model", ""))

        templatizer = "-" if self.config.get("templates") else model_of("templatize")
        return {"templatize": templatizer, "match": (self.config.get("match") or {}).get("embedder", ""),
                "instantiate": model_of("instantiate"), "judge": model_of("judge", "judge_backend")}

    def model_ids(self) -> dict[str, str]:
        """The model ids stored on the rows per model stage (what the engine reported, e.g. a GGUF file)."""
        return {stage: ", ".join(sorted(self.row_values.get(f"{stage}_model", set()))) or "-"
                for stage in ("templatize", "instantiate", "judge")}

    def prompt_versions(self) -> dict[str, str]:
        """Prompt version per model stage: the values stored on the rows, else the configured ones."""
        out = {}
        for stage in ("templatize", "instantiate", "judge"):
            used = sorted(self.row_values.get(f"{stage}_prompt", set()))
            configured = f"{stage}-{(self.config.get(stage) or {}).get('prompt_version', '?')}"
            out[stage] = ", ".join(used) if used else "-" if stage == "templatize" and self.config.get(
                "templates") else configured
        return out

    def template_uses(self) -> list[tuple[str, int]]:
        """(template_id, kept pairs) for every template in the dataset, most used first."""
        return Counter(p.template_id for p in self.pairs).most_common()

    def sample_pairs(self, k: int = 5) -> list[Pair]:
        """A few kept pairs drawn with the run's seed (the same on every render)."""
        seed = (self.config.get("run") or {}).get("seed", 0)
        return random.Random(seed).sample(self.pairs, min(k, len(self.pairs)))


def load_run(run_dir: str | Path) -> RunView:
    """Read a run folder; raise ReportError when it is not one."""
    folder = RunFolder(run_dir)
    root = folder.root
    config_path, marker = folder.config_file, folder.fingerprint_file
    if not (config_path.is_file() and marker.is_file()):
        raise ReportError(f"{root} is not a run folder (no config.yaml and fingerprint)")
    config_text = config_path.read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    fingerprint = marker.read_text().strip()
    summary = _read_json(folder.summary_file)
    if summary is not None and summary.get("config_fingerprint") != fingerprint:
        summary = None  # left by a run with another config, started over with --force and not done yet
    stages, shards = _stage_stats(folder)
    parts = folder.dataset_files()
    if summary is None and not parts:  # unfinished: the pairs its ranks have kept so far, before pair dedup
        parts = folder.stage_outputs("filter")
    pairs = [Pair.model_construct(**row) for part in parts
             for row in pq.read_table(part, columns=_present(part, PAIR_COLUMNS)).to_pylist()]
    coverage = [value for shard in folder.stage_outputs("instantiate")
                for value in pq.read_table(shard, columns=["excerpt_coverage"]).column(0).to_pylist()]
    index = summary.get("index") if summary else _read_json(folder.index / "index.json")
    view = RunView(root, config, config_text, fingerprint, summary, stages, shards, parts, pairs, coverage,
                   index=index)
    view.quality = quality(stages, DatasetTally.from_files(parts))
    view.score_bins = read_score_bins(folder, parts)
    view.row_values = {
        "templatize_model": _distinct(folder.stage_dir("templatize"), "model_id"),
        "templatize_prompt": _distinct(folder.stage_dir("templatize"), "prompt_version"),
        "instantiate_model": {p.instantiator_model for p in pairs} - {""},
        "instantiate_prompt": {p.instantiate_prompt_version for p in pairs} - {""},
        "judge_model": {p.judge_model for p in pairs} - {""},
        "judge_prompt": {p.judge_prompt_version for p in pairs} - {""},
    }
    return view


def _stage_stats(folder: RunFolder) -> tuple[dict[str, StageStats], dict[str, int]]:
    """Stats summed over each stage's committed shards (a shard counts once its output file exists), and pair
    dedup across ranks as each rank's write task counted it."""
    stages: dict[str, StageStats] = {}
    shards: dict[str, int] = {}

    def add(name: str, stats: dict[str, Any]) -> None:
        stages.setdefault(name, StageStats()).merge(StageStats.from_dict(stats))
        shards[name] = shards.get(name, 0) + 1

    for name in STAGE_ORDER:
        for stats_file in folder.stage_outputs(name, "stats/shard-*.json"):
            if (stats_file.parent.parent / f"{stats_file.stem}.parquet").is_file():
                add(name, json.loads(stats_file.read_text()))
    for marker in sorted(folder.work.glob("steps/write/task-*.json")):
        dedup = json.loads(marker.read_text()).get("stages", {}).get("dedup")
        if dedup:
            add("dedup", dedup)
    return stages, shards


def _distinct(stage_dir: Path, column: str) -> set[str]:
    """Distinct values of a column over a stage's committed output shards."""
    values: set[str] = set()
    for shard in sorted(stage_dir.glob("shard-*.parquet")):
        if column in pq.read_schema(shard).names:
            values.update(pq.read_table(shard, columns=[column]).column(0).unique().to_pylist())
    return values - {"", None}


def _present(part: Path, columns: tuple[str, ...]) -> list[str]:
    names = set(pq.read_schema(part).names)
    return [c for c in columns if c in names]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
