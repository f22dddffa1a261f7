"""The Ray Data executor on a real local Ray cluster: the same rows as the local executor, resumable."""

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

    # A shard lost on the cluster is redone there; the finished ones are read back.
    (tmp_path / "ray" / "work" / "judge" / "shard-00001.parquet").unlink()
    (tmp_path / "ray" / "dataset" / "part-00001.parquet").unlink()
    Pipeline(distributed, show_progress=False).run()
    assert pairs_of(distributed) == pairs_of(local)


def test_two_actors_match_with_the_broadcast_index_and_agree_with_local(tmp_path):
    local = config_for(tmp_path, out="local", shard_size=1)
    local.generator = SCRIPTED
    local.match.max_template_uses = None  # no corpus-wide cap: shards are independent, matching goes to the actors
    Pipeline(local, show_progress=False).run()
    distributed = local.model_copy(deep=True)
    distributed.run.output_dir = str(tmp_path / "ray")
    distributed.run.executor = "ray"
    distributed.run.workers = 2
    distributed.run.cpus_per_worker = 0.5
    summary = Pipeline(distributed, show_progress=False).run()
    assert pairs_of(distributed) == pairs_of(local) and pairs_of(local)
    assert summary["stages"]["match"]["rows_in"] == 4
