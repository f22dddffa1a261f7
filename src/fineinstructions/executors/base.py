"""The one interface the pipeline knows an executor by: run a stage spec over shards, commit each shard.

An executor receives a `StageSpec` (stage name, config, fingerprint, output folder) and numbered shards
of input records; it returns each shard's output records, computed and committed, or read back when
already committed from the same inputs. How and where the stage runs (this process, Ray actors) is the
executor's business; a `sequential` stage (its output depends on earlier shards) always runs its shards
in order, in one instance.
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
    from fineinstructions.stages.context import StageContext

Shards = Sequence[tuple[int, Sequence[Record]]]


class Executor(ABC):
    """Runs stage specs over shards. Use as a context manager (progress display, cluster connection)."""

    workers: int = 1
    stats: dict[str, StageStats]  # per stage, summed over every shard run or read back
    computed: set[tuple[str, int]]  # (stage, shard) computed by this run, not read back

    @property
    def default_window(self) -> int:
        """Document shards in flight when the config does not say: the memory bound of a run."""
        return 2 * self.workers

    @abstractmethod
    def run(self, spec: StageSpec, shards: Shards, depends: str = "") -> dict[int, list[Record]]:
        """Each shard's output (by shard number); `depends` names state besides the records that the
        outputs depend on (e.g. the index)."""

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
    from fineinstructions.executors.local import LocalExecutor

    return LocalExecutor(context, run.batch_size, progress, run.retry_engine_failures)
