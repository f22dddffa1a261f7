"""Run the model stages on a Ray cluster: pending shards become rows of a Ray Dataset, and `map_batches`
hands them to a pool of actors, each holding its own engine (GPU stages get `num_gpus`).

Everything else is the local executor's: cheap stages with state across shards (match's corpus-wide
template cap, the filter's pair dedup) run in the driver, and each actor commits its shard exactly like
the local executor does (rejects, stats, then the output as the completion marker), into the run folder.
On several machines that folder must be shared storage (NFS, a mounted bucket). Only the shards without
a marker are sent, and Ray hands each to whichever actor is free, so a resumed run spreads the remaining
work over however many workers exist now.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from fineinstructions.backends.factory import BackendPool
from fineinstructions.executors.local import LocalExecutor, commit_shard, read_committed, shard_digest, shard_name
from fineinstructions.io.writers import read_records
from fineinstructions.recipes import StageRecipe
from fineinstructions.records import Record
from fineinstructions.stages.base import Stage, StageStats


class ShardWorker:
    """A Ray actor: builds the stage (and its engine) once, then runs and commits one shard per row."""

    def __init__(self, recipe: StageRecipe, stage_name: str, out_dir: str, batch_size: int):
        self.recipe = recipe
        self.stage_name = stage_name
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.backends: BackendPool = recipe.new_pool()
        self.stage: Stage = recipe.build(self.backends)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        shards, stats = [], []
        for shard, payload, digest in zip(batch["shard"], batch["records"], batch["digest"], strict=True):
            records = [self.recipe.input_type.model_validate_json(row) for row in json.loads(payload)]
            _, shard_stats = commit_shard(self.stage, self.stage_name, int(shard), records, self.recipe.output_type,
                                          self.out_dir, self.batch_size, digest=str(digest))
            shards.append(int(shard))
            stats.append(json.dumps(shard_stats.to_dict()))
        return {"shard": shards, "stats": stats}


class RayExecutor(LocalExecutor):
    """The local executor, with model stages spread over a pool of Ray actors."""

    def __init__(self, work_dir: Path, batch_size: int = 8, console: Console | None = None,
                 show_progress: bool = True, backends: BackendPool | None = None, workers: int = 1,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, address: str | None = None,
                 retry_engine_failures: bool = True):
        super().__init__(work_dir, batch_size, console, show_progress, backends, retry_engine_failures)
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.address = address
        self._started_ray = False

    @property
    def default_window(self) -> int:
        # Each window starts a fresh actor pool per model stage (engines load again): fewer, larger windows.
        return 8 * self.workers

    def __enter__(self) -> RayExecutor:
        import ray

        if not ray.is_initialized():
            # Modules importable here (a custom backend in the user's project) must import in the actors too.
            path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE":
                                               os.environ.get("HF_HUB_OFFLINE", "0")}})
            self._started_ray = True
        ray.data.DataContext.get_current().enable_progress_bars = self.show_progress
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._started_ray:
            import ray

            ray.shutdown()

    def run_shards(self, stage_name: str, recipe: StageRecipe,
                   shards: Sequence[tuple[int, Sequence[Record]]], depends: str = "") -> dict[int, list[Record]]:
        """Committed shards are read back; the others run on the actor pool, whichever actor is free."""
        import ray

        out_dir = self.work_dir / stage_name
        task = self._task(stage_name)
        stats = self.stats.setdefault(stage_name, StageStats())
        results: dict[int, list[Record]] = {}
        pending: list[dict[str, Any]] = []
        for shard, records in shards:
            digest = shard_digest(records, depends)
            committed = read_committed(out_dir, shard, recipe.output_type, digest, self.retry_engine_failures)
            if committed is not None:
                results[shard], shard_stats = committed
                stats.merge(shard_stats)
                self.progress.advance(task, len(records))
            else:
                pending.append({"shard": shard, "digest": digest,
                                "records": json.dumps([r.model_dump_json() for r in records])})
        if not pending:
            return results
        dataset = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
            ShardWorker,
            fn_constructor_kwargs={"recipe": recipe, "stage_name": stage_name, "out_dir": str(out_dir),
                                   "batch_size": self.batch_size},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(pending))),
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker or None,
        )
        for row in dataset.iter_rows():
            shard = int(row["shard"])
            shard_stats = StageStats.from_dict(json.loads(row["stats"]))
            stats.merge(shard_stats)
            self.progress.advance(task, shard_stats.rows_in)
            self._show_rate(task, stats, StageStats())
            results[shard] = read_records(out_dir / f"{shard_name(shard)}.parquet", recipe.output_type)
            self.computed.add((stage_name, shard))
        return results
