"""The Python API: the whole pipeline, or any one stage on rows you hold (a notebook, a script).

    import fineinstructions as fi

    summary = fi.run("configs/example.yaml", overrides=["match.top_k=4"])   # a config object, dict or YAML
    out = fi.run_stage("templatize", [{"text": "How do I reverse a list in Python?"}])
    out.rows       # same kind as the input: a list of dicts, a pyarrow.Table or a datasets.Dataset
    out.rejected   # the rows the stage dropped, each with its `reason`
    out.stats      # rows in/out, drop reasons, requests, tokens, seconds

A stage is built exactly as in a run, through its `from_config`: settings come from the config (defaults
when none is given) and `overrides`; engines are kept between calls (one per backend config) until
`close()`; `engine=` serves the stage with a backend object of your own instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fineinstructions.backends.base import Backend
from fineinstructions.backends.factory import BackendPool
from fineinstructions.config import PipelineConfig, stage_config, validated
from fineinstructions.errors import ConfigError
from fineinstructions.io.read_stats import ReadStats
from fineinstructions.io.rows import typed_records
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import STAGE_ORDER, stage_class

ConfigLike = PipelineConfig | Mapping[str, Any] | str | Path

_engines = BackendPool()  # engines kept between calls, one per backend config


@dataclass
class StageOutput:
    """What a stage made of your rows: `rows` and `rejected` in the kind of data you passed in."""

    rows: Any
    rejected: Any
    stats: dict[str, Any] = field(default_factory=dict)


def load_config(config: ConfigLike, overrides: Sequence[str] = ()) -> PipelineConfig:
    """A PipelineConfig from an object, a dict or a YAML path, with `section.key=value` overrides applied."""
    if isinstance(config, PipelineConfig):
        loaded = config
    elif isinstance(config, Mapping):
        loaded = validated(PipelineConfig, dict(config), "config")
    else:
        return PipelineConfig.from_yaml(config, overrides)
    return loaded.with_overrides(list(overrides)) if overrides else loaded


def run(config: ConfigLike, overrides: Sequence[str] = (), force: bool = False,
        show_progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; return its summary (also in `<output_dir>/summary.json`)."""
    from fineinstructions.pipeline import Pipeline

    return Pipeline(load_config(config, overrides), show_progress=show_progress, force=force).run()


def run_stage(stage: str, data: Any, config: ConfigLike | None = None, overrides: Sequence[str] = (), *,
              engine: Backend | None = None, index: str | Path | None = None, text_field: str = "text",
              id_field: str | None = None) -> StageOutput:
    """Run one stage (`query_filter`, `templatize`, `template_dedup`, `match`, `instantiate`, `judge`,
    `filter`) on `data`: a list of dicts, a `pyarrow.Table` or a Hugging Face `datasets.Dataset`.

    Rows in the stage's input schema are validated as they are; plain rows of queries or documents are read
    by `text_field` (and `id_field`). `match` needs an `index` folder (`fineinstructions index`, or a run's
    `index/`). Rows that are not valid input come back in `rejected` with their reason, like the rows the
    stage drops."""
    cls = stage_class(stage)
    cfg = load_config(config, overrides) if config is not None else stage_config({})
    if config is None and overrides:
        cfg = cfg.with_overrides(list(overrides))
    rows = _rows_of(data)
    read = ReadStats(keep_positions=True)
    records = list(typed_records(rows, cls.input_type, text_field=text_field, id_field=id_field,
                                 source_name="rows", stats=read))
    unreadable = [(rows[position], reason) for position, reason in read.skipped_at]
    context = StageContext(cfg, cfg.fingerprint(), _engines, index_dir=index,
                           engines={stage: engine} if engine is not None else None)
    instance = cls.from_config(cfg, context)
    stats = StageStats()
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = [row | {"reason": reason, "stage": stage} for row, reason in unreadable]
    size = max(1, len(records)) if cls.whole_shard else cfg.run.batch_size
    outputs = []
    for start in range(0, len(records), size):
        result = instance.run_batch(records[start : start + size], stats)
        outputs.extend(result.records)
        rejected.extend(r.row | {"reason": r.reason, "stage": stage} for r in result.rejected)
    instance.after_shard(outputs)
    kept = [record.model_dump() for record in outputs]
    return StageOutput(_like(data, kept), _like(data, rejected), stats.to_dict())


def close() -> None:
    """Close the engines kept between `run_stage` calls."""
    _engines.close()


def _rows_of(data: Any) -> list[dict[str, Any]]:
    """Rows of a list of dicts, a pyarrow.Table or a datasets.Dataset (any iterable of mappings)."""
    if hasattr(data, "to_pylist"):  # pyarrow.Table / RecordBatch
        return list(data.to_pylist())
    if hasattr(data, "to_list") and hasattr(data, "features"):  # datasets.Dataset
        return list(data.to_list())
    if isinstance(data, Mapping | str | bytes) or not isinstance(data, Iterable):
        raise ConfigError(f"give a stage a list of dicts, a pyarrow.Table or a datasets.Dataset, not "
                          f"{type(data).__name__}")
    rows = list(data)
    bad = next((row for row in rows if not isinstance(row, Mapping)), None)
    if bad is not None:
        raise ConfigError(f"each row must be a mapping (a dict), got {type(bad).__name__}")
    return [dict(row) for row in rows]


def _like(data: Any, rows: list[dict[str, Any]]) -> Any:
    """`rows` in the kind of `data`: a pyarrow.Table, a datasets.Dataset, else a list of dicts."""
    if not isinstance(data, list | tuple):  # a table's rows share one set of columns (missing ones: null)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        rows = [{key: row.get(key) for key in columns} for row in rows]
    if hasattr(data, "to_pylist"):
        import pyarrow as pa

        return pa.Table.from_pylist(rows)
    if hasattr(data, "to_list") and hasattr(data, "features"):
        from datasets import Dataset

        return Dataset.from_list(rows)
    return rows


__all__ = ["STAGE_ORDER", "StageOutput", "close", "load_config", "run", "run_stage"]
