"""Run on a Ray cluster. A step's tasks (each rank of the document phase, each dedup task) are Ray tasks:
a rank gets `cpus_per_worker` CPUs and `gpus_per_worker` GPUs, holds its engines for its whole life, and
commits into the run folder (shared storage on several machines); Ray reruns a task whose worker died, and
the task resumes from its committed shards. The query stages' shards become rows of a Ray Dataset, and
`map_batches` hands them to a pool of actors, each building the stage (and its engine) from the spec once.

Sequential stages (match's corpus-wide template cap, the filter's pair dedup) and cheap stages run in the
driver through a local executor; each actor commits its shard exactly like the local executor does
(rejects, stats, then the output as the completion marker), into the run folder. On several machines that
folder must be shared storage (NFS, a mounted bucket). Only the shards without a marker are sent, and Ray
hands each to whichever actor is free, so a resumed run spreads the remaining work over however many
workers exist now.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fineinstructions.executors.base import Executor, Shards
from fineinstructions.executors.commit import commit_shard, read_committed, shard_digest
from fineinstructions.executors.local import LocalExecutor
from fineinstructions.executors.progress import StageProgress
from fineinstructions.executors.tasks import TaskFailed, failure_message, run_task, task_environment
from fineinstructions.io.run_folder import shard_output_path
from fineinstructions.io.writers import read_records
from fineinstructions.records import Record
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.context import StageContext, worker_context
from fineinstructions.stages.registry import StageSpec

if TYPE_CHECKING:
    from fineinstructions.ranks.steps import Step


class ShardWorker:
    """A Ray actor: builds the stage (and its engine) from the spec once, then runs and commits one shard per row."""

    def __init__(self, spec: StageSpec, batch_size: int):
        self.spec = spec
        self.batch_size = batch_size
        self.context = worker_context(spec)
        self.stage = spec.build(self.context)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        shards, stats = [], []
        input_type = self.stage.input_type
        for shard, payload, digest in zip(batch["shard"], batch["records"], batch["digest"], strict=True):
            records = [input_type.model_validate_json(row) for row in json.loads(payload)]
            _, shard_stats = commit_shard(self.stage, int(shard), records, Path(self.spec.out_dir), self.spec.feed_size,
                                          digest=str(digest))
            shards.append(int(shard))
            stats.append(json.dumps(shard_stats.to_dict()))
        return {"shard": shards, "stats": stats}


class RayExecutor(Executor):
    """Model stages spread over a pool of Ray actors; the rest in the driver."""

    def __init__(self, context: StageContext, batch_size: int = 8, progress: StageProgress | None = None,
                 workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                 address: str | None = None, retry_engine_failures: bool = True):
        self.driver = LocalExecutor(context, batch_size, progress, retry_engine_failures)
        self.progress = self.driver.progress
        self.stats = self.driver.stats
        self.computed = self.driver.computed
        self.batch_size = batch_size
        self.retry_engine_failures = retry_engine_failures
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.address = address
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        import ray

        if not ray.is_initialized():
            # Modules importable here (a custom backend in the user's project) must import in the actors too.
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": task_environment()})
            self._started_ray = True
        ray.data.DataContext.get_current().enable_progress_bars = self.progress.enabled
        self.driver.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.driver.__exit__(*exc)
        if self._started_ray:
            import ray

            ray.shutdown()

    def run_tasks(self, step: Step, tasks: Sequence[int]) -> None:
        """Each task as a Ray task (a model-holding step's with the worker's GPUs), as many at once as the
        cluster's resources allow; failures are reported once every task has ended."""
        import ray

        gpus = self.gpus_per_worker if step.holds_model else 0
        remote = ray.remote(run_task).options(num_cpus=self.cpus_per_worker, num_gpus=gpus, max_retries=2)
        label = f"{step.name} tasks"
        self.progress.expect(label, len(tasks))
        refs = {remote.remote(step, task): task for task in tasks}
        failed: dict[int, str] = {}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            task = refs[ready[0]]
            try:
                ray.get(ready[0])
            except Exception as err:  # noqa: BLE001 - reported per task below, with the run's logs
                failed[task] = type(err).__name__
            self.progress.advance(label, 1)
        if failed:
            raise TaskFailed(failure_message(step, failed))

    def on_workers(self, spec: StageSpec) -> bool:
        """Whether a spec's shards go to the actors: independent shards of a stage that holds a model (or any
        independent stage when there are several workers: one worker would only add a process hop)."""
        return not spec.sequential and (spec.stage_class.holds_model or self.workers > 1)

    def run(self, spec: StageSpec, shards: Shards, depends: str = "") -> dict[int, list[Record]]:
        """Committed shards are read back; the others run on the actor pool, whichever actor is free."""
        if not self.on_workers(spec):
            return self.driver.run(spec, shards, depends)
        import ray

        out_dir = Path(spec.out_dir)
        output_type = spec.stage_class.output_type
        self.progress.expect(spec.stage, sum(len(records) for _, records in shards))
        stats = self.stats.setdefault(spec.stage, StageStats())
        results: dict[int, list[Record]] = {}
        pending: list[dict[str, Any]] = []
        for shard, records in shards:
            digest = shard_digest(records, depends)
            committed = read_committed(out_dir, shard, output_type, digest, self.retry_engine_failures)
            if committed is not None:
                results[shard], shard_stats = committed
                stats.merge(shard_stats)
                self.progress.advance(spec.stage, len(records))
            else:
                pending.append({"shard": shard, "digest": digest,
                                "records": json.dumps([r.model_dump_json() for r in records])})
        if not pending:
            return results
        dataset = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
            ShardWorker,
            fn_constructor_kwargs={"spec": spec, "batch_size": self.batch_size},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(pending))),
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker or None,
        )
        for row in dataset.iter_rows():
            shard = int(row["shard"])
            shard_stats = StageStats.from_dict(json.loads(row["stats"]))
            stats.merge(shard_stats)
            self.progress.advance(spec.stage, shard_stats.rows_in)
            self.progress.show_rate(spec.stage, stats)
            results[shard] = read_records(shard_output_path(out_dir, shard), output_type)
            self.computed.add((spec.stage, shard))
        return {shard: results[shard] for shard, _ in shards}
