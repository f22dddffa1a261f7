"""The Ray executor on a real local Ray cluster: the same rows as the local executor, resumable. The query
stages run on a pool of actors (Ray Data); each rank of the document phase is a Ray task."""

from __future__ import annotations

import pytest

from fineinstructions.config import BackendConfig
from fineinstructions.pipeline import Pipeline
from tests.test_pipeline import config_for
from tests.test_resume import pairs_of

ray = pytest.importorskip("ray")

SCRIPTED = BackendConfig(kind="custom", model="tests.scripted_backend:make")


def test_ray_executor_gives_the_local_executors_rows_and_resumes(tmp_path):
    local = config_for(tmp_path, out="local")
    local.generator = SCRIPTED
    local.match.max_template_uses = 1
    local_summary = Pipeline(local, show_progress=False).run()

    distributed = local.model_copy(deep=True)
    distributed.run.output_dir = str(tmp_path / "ray")
    distributed.run.executor = "ray"
    distributed.run.cpus_per_worker = 0.5  # 2-CPU machines: one actor of half a CPU leaves room for Ray Data
    summary = Pipeline(distributed, show_progress=False).run()
    assert pairs_of(distributed) == pairs_of(local) and pairs_of(local)
    for stage in ("templatize", "instantiate", "judge", "filter"):
        assert summary["stages"][stage]["rows_out"] == local_summary["stages"][stage]["rows_out"]
        assert summary["stages"][stage]["dropped"] == local_summary["stages"][stage]["dropped"]

    # A rank that died on the cluster before finishing (its marker and last judge shard missing) is rerun there,
    # and inside it only the missing shard is computed.
    (tmp_path / "ray" / "work" / "judge" / "rank-00000" / "shard-000001.parquet").unlink()
    (tmp_path / "ray" / "work" / "steps" / "generate" / "task-00000.json").unlink()
    Pipeline(distributed, show_progress=False).run()
    assert pairs_of(distributed) == pairs_of(local)
    assert (tmp_path / "ray" / "work" / "judge" / "rank-00000" / "shard-000001.parquet").is_file()


def test_two_ranks_as_ray_tasks_agree_with_two_local_processes(tmp_path):
    local = config_for(tmp_path, out="local", shard_size=1)
    local.generator = SCRIPTED
    local.match.max_template_uses = 2  # split into per-rank budgets of 1: the same in both executors
    local.run.ranks = local.run.workers = 2
    Pipeline(local, show_progress=False).run()
    distributed = local.model_copy(deep=True)
    distributed.run.output_dir = str(tmp_path / "ray")
    distributed.run.executor = "ray"
    distributed.run.cpus_per_worker = 0.5
    summary = Pipeline(distributed, show_progress=False).run()
    assert pairs_of(distributed) == pairs_of(local) and pairs_of(local)
    assert summary["stages"]["match"]["rows_in"] == 4
    assert sorted(p.name for p in (tmp_path / "ray" / "dataset").iterdir()) == ["rank-00000", "rank-00001"]
