"""Run stages in this process, shard after shard, with a live progress bar per stage; run a step's tasks
in this process (one worker) or in `workers` local child processes.

A stage is built once per run (through its `from_config`, from the executor's `StageContext`) and only
when some shard must be computed: a resumed run whose shards are all committed loads no engine. A
`sequential` stage is built first, because each shard's digest includes the state it carries over.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fineinstructions.executors.base import Executor, Shards
from fineinstructions.executors.commit import commit_shard, read_committed, shard_digest
from fineinstructions.executors.progress import StageProgress
from fineinstructions.executors.tasks import run_in_processes
from fineinstructions.records import Record
from fineinstructions.stages.base import Stage, StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import StageSpec

if TYPE_CHECKING:
    from fineinstructions.ranks.steps import Step


class LocalExecutor(Executor):
    """Runs every stage in this process."""

    def __init__(self, context: StageContext, batch_size: int = 8, progress: StageProgress | None = None,
                 retry_engine_failures: bool = True, workers: int = 1):
        self.context = context
        self.workers = workers
        self.batch_size = batch_size
        self.progress = progress or StageProgress(enabled=False)
        self.retry_engine_failures = retry_engine_failures
        self.stats: dict[str, StageStats] = {}
        self.computed: set[tuple[str, int]] = set()
        self._stages: dict[tuple[str, str], Stage[Any, Any]] = {}

    def __enter__(self) -> LocalExecutor:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run(self, spec: StageSpec, shards: Shards, depends: str = "") -> dict[int, list[Record]]:
        """Shards in order; each read back if committed from the same inputs, else computed and committed."""
        self.progress.expect(spec.stage, sum(len(records) for _, records in shards))
        stats = self.stats.setdefault(spec.stage, StageStats())
        out_dir = Path(spec.out_dir)
        stage = self._stage(spec) if spec.sequential else None
        outputs_by_shard: dict[int, list[Record]] = {}
        for shard, records in shards:
            state = stage.state_digest() if spec.sequential and stage is not None else ""
            digest = shard_digest(records, "|".join(part for part in (depends, state) if part))
            committed = read_committed(out_dir, shard, spec.stage_class.output_type, digest,
                                       self.retry_engine_failures)
            if committed is not None:
                outputs, shard_stats = committed
                self.progress.advance(spec.stage, len(records))
            else:
                stage = stage or self._stage(spec)
                outputs, shard_stats = self._commit(stage, spec, shard, records, out_dir, stats, digest)
            stats.merge(shard_stats)
            if spec.sequential and stage is not None:
                stage.after_shard(outputs)
            outputs_by_shard[shard] = outputs
        return outputs_by_shard

    def run_tasks(self, step: Step, tasks: Sequence[int]) -> None:
        """One worker: the tasks in this process, lending them its engines and index (the demo's one model serves
        every stage). Several: each task in a fresh child process, `workers` at a time (a single task too: what it
        holds, e.g. the cluster step's duplicate groups, never lands in the driver)."""
        if self.workers <= 1:
            for task in tasks:
                step.run(task, self.context, self.progress)
            return
        label = f"{step.name} tasks"
        self.progress.expect(label, len(tasks))
        run_in_processes(step, tasks, self.workers, on_done=lambda _: self.progress.advance(label, 1))

    def _commit(self, stage: Stage[Any, Any], spec: StageSpec, shard: int, records: Any, out_dir: Path,
                stats: StageStats, digest: str) -> tuple[list[Record], StageStats]:
        def on_batch(rows: int, shard_stats: StageStats) -> None:
            self.progress.advance(spec.stage, rows)
            self.progress.show_rate(spec.stage, stats, shard_stats)

        committed = commit_shard(stage, shard, records, out_dir, spec.feed_size, on_batch, digest)
        self.computed.add((spec.stage, shard))
        return committed

    def build(self, spec: StageSpec) -> Stage[Any, Any]:
        """Build `spec`'s stage now (its engines load here) rather than when a shard first needs it."""
        return self._stage(spec)

    def _stage(self, spec: StageSpec) -> Stage[Any, Any]:
        """The stage of `spec`, built once for the executor's life (engines and carried state live in it)."""
        key = (spec.stage, spec.out_dir)
        if key not in self._stages:
            self._stages[key] = spec.build(self.context)
        return self._stages[key]
