"""The interface the pipeline knows an executor by: two verbs.

`run(spec, shards)`: a `StageSpec` (stage name, config, fingerprint, output folder) over numbered shards of
input records; it returns each shard's output records, computed and committed, or read back when already
committed from the same inputs. A `sequential` stage (its output depends on earlier shards) always runs
its shards in order, in one instance. The query stages run this way.

`run_tasks(step, tasks)`: independent tasks of a step (ranks/steps.py: a rank of the document phase, a
dedup task), each of which writes its own outputs and marker. Where they run is the executor's business:
this process or local child processes, Ray tasks, Slurm array tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fineinstructions.records import Record
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.registry import StageSpec

if TYPE_CHECKING:
    from rich.console import Console

    from fineinstructions.config import PipelineConfig
    from fineinstructions.ranks.steps import Step
    from fineinstructions.stages.context import StageContext

Shards = Sequence[tuple[int, Sequence[Record]]]


class Executor(ABC):
    """Runs stage specs over shards. Use as a context manager (progress display, cluster connection)."""

    workers: int = 1
    stats: dict[str, StageStats]  # per stage, summed over every shard run or read back
    computed: set[tuple[str, int]]  # (stage, shard) computed by this run, not read back

    @abstractmethod
    def run(self, spec: StageSpec, shards: Shards, depends: str = "") -> dict[int, list[Record]]:
        """Each shard's output (by shard number); `depends` names state besides the records that the
        outputs depend on (e.g. the index)."""

    @abstractmethod
    def run_tasks(self, step: Step, tasks: Sequence[int]) -> None:
        """Run these tasks of `step` (each commits its own marker); raise TaskFailed naming those that did not
        finish, after the others have."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def make_executor(config: PipelineConfig, context: StageContext, console: Console,
                  show_progress: bool = True) -> Executor:
    """The executor the run config names (Ray is imported only when asked for)."""
    from fineinstructions.executors.progress import StageProgress

    run = config.run
    progress = StageProgress(console, show_progress)
    if run.executor == "ray":
        from fineinstructions.executors.ray import RayExecutor

        return RayExecutor(context, run.batch_size, progress, workers=run.workers,
                           cpus_per_worker=run.cpus_per_worker, gpus_per_worker=run.gpus_per_worker,
                           address=run.ray_address, retry_engine_failures=run.retry_engine_failures)
    if run.executor == "slurm":
        from fineinstructions.executors.slurm import SlurmExecutor

        return SlurmExecutor(context, run.batch_size, progress, cpus_per_task=run.cpus_per_worker,
                             gpus_per_task=run.gpus_per_worker, time_limit=run.slurm_time,
                             options=run.slurm_options, retry_engine_failures=run.retry_engine_failures)
    from fineinstructions.executors.local import LocalExecutor

    return LocalExecutor(context, run.batch_size, progress, run.retry_engine_failures, workers=run.workers)
