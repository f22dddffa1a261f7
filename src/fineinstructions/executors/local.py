"""Run stages over shards on this machine: batches in, atomic per-shard outputs, resumable.

Each (stage, shard) writes three files into the stage's folder: `rejects/shard-N.parquet` (dropped rows
with their reasons), `stats/shard-N.json`, and last `shard-N.parquet` (the output records). Each file is
written atomically, and the output file doubles as the completion marker, so a rerun skips every
finished shard and redoes only the missing ones.

A committed shard is redone when what it depends on changed (the digest of its input records and of any
other state it reads, stored with its stats) or, by default, when some of its requests failed through the
engine's fault (an outage): the run's request cache answers every request that succeeded, so only the
failed ones reach the engine again, and the shards downstream follow because their inputs changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fineinstructions.backends.factory import BackendPool
from fineinstructions.io.atomic import write_json_atomic
from fineinstructions.io.writers import read_records, write_records, write_rows
from fineinstructions.recipes import StageRecipe
from fineinstructions.records import Record
from fineinstructions.stages.base import Stage, StageStats

StageFactory = Callable[[], Stage]


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def chunked(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def shard_digest(records: Sequence[Record], depends: str = "") -> str:
    """What a shard's output depends on: its input records, in order, and `depends` (other state it reads)."""
    digest = hashlib.sha256(depends.encode())
    for record in records:
        digest.update(record.model_dump_json().encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def read_committed(out_dir: Path, shard: int, output_type: type[Record], digest: str | None = None,
                   retry_engine_failures: bool = True) -> tuple[list[Record], StageStats] | None:
    """A shard's committed output and stats, or None when it must run: not finished, made from other inputs
    than `digest`, or (with `retry_engine_failures`) holding requests that failed through the engine's fault.

    Shards committed before digests were stored carry none and are taken as they are.
    """
    done = out_dir / f"{shard_name(shard)}.parquet"
    stats_path = out_dir / "stats" / f"{shard_name(shard)}.json"
    if not (done.is_file() and stats_path.is_file()):
        return None
    stored = json.loads(stats_path.read_text())
    if digest is not None and stored.get("input_digest", digest) != digest:
        return None
    stats = StageStats.from_dict(stored)
    if retry_engine_failures and stats.engine_failures:
        return None
    return read_records(done, output_type), stats


def commit_shard(stage: Stage, stage_name: str, shard: int, records: Sequence[Record], output_type: type[Record],
                 out_dir: Path, batch_size: int, whole_shard: bool = False,
                 on_batch: Callable[[int, StageStats], None] | None = None,
                 digest: str | None = None) -> tuple[list[Record], StageStats]:
    """Run a stage over one shard and commit it: rejects, then stats, then the output (the marker), each atomic.

    `whole_shard` hands the stage the shard as one batch (for stages that group across rows); `digest`
    (default: of `records`) is stored with the stats, so a rerun knows what the shard was made from.
    """
    shard_stats = StageStats()
    outputs: list[Record] = []
    rejected_rows: list[dict] = []
    size = max(1, len(records)) if whole_shard else batch_size
    for batch in chunked(records, size):
        result = stage.run_batch(batch, shard_stats)
        outputs.extend(result.records)
        rejected_rows.extend(r.row | {"reason": r.reason, "stage": stage_name} for r in result.rejected)
        if on_batch is not None:
            on_batch(len(batch), shard_stats)
    write_rows(out_dir / "rejects" / f"{shard_name(shard)}.parquet", rejected_rows)
    stored = shard_stats.to_dict() | {"input_digest": digest or shard_digest(records)}
    write_json_atomic(out_dir / "stats" / f"{shard_name(shard)}.json", stored)
    write_records(out_dir / f"{shard_name(shard)}.parquet", outputs, output_type)  # last: the completion marker
    return outputs, shard_stats


class LocalExecutor:
    """Runs a stage on one shard at a time in this process, with a live progress bar per stage."""

    workers = 1

    @property
    def default_window(self) -> int:
        """Document shards in flight when the config does not say: the memory bound of a run."""
        return 2 * self.workers

    def __init__(self, work_dir: Path, batch_size: int = 8, console: Console | None = None,
                 show_progress: bool = True, backends: BackendPool | None = None,
                 retry_engine_failures: bool = True):
        self.work_dir = Path(work_dir)
        self.retry_engine_failures = retry_engine_failures
        self.computed: set[tuple[str, int]] = set()  # (stage, shard) computed by this process, not read back
        self.backends = backends or BackendPool()
        self.show_progress = show_progress
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not show_progress,
        )
        self._tasks: dict[str, TaskID] = {}
        self.stats: dict[str, StageStats] = {}

    def __enter__(self) -> LocalExecutor:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def expect(self, stage_name: str, rows: int) -> None:
        """Grow a stage's progress total by `rows` (totals become known shard by shard)."""
        task = self._task(stage_name)
        current = self.progress.tasks[self._index(task)].total or 0
        self.progress.update(task, total=current + rows)

    def run(self, stage_name: str, make_stage: StageFactory, shard: int, records: Sequence[Record],
            output_type: type[Record], whole_shard: bool = False, out_dir: Path | None = None,
            depends: str = "") -> list[Record]:
        """Output of a stage on one shard: read back if committed from the same inputs, else computed and committed.

        `whole_shard` hands the stage the shard as one batch (for stages that group across rows);
        `out_dir` defaults to `work_dir/stage_name`; `depends` names state besides the records that the
        output depends on (e.g. the index, or what earlier shards kept).
        """
        out_dir = out_dir or self.work_dir / stage_name
        task = self._task(stage_name)
        stats = self.stats.setdefault(stage_name, StageStats())
        digest = shard_digest(records, depends)
        committed = read_committed(out_dir, shard, output_type, digest, self.retry_engine_failures)
        if committed is not None:
            outputs, shard_stats = committed
            stats.merge(shard_stats)
            self.progress.advance(task, len(records))
            return outputs

        def on_batch(rows: int, shard_stats: StageStats) -> None:
            self.progress.advance(task, rows)
            self._show_rate(task, stats, shard_stats)

        outputs, shard_stats = commit_shard(make_stage(), stage_name, shard, records, output_type, out_dir,
                                            self.batch_size, whole_shard, on_batch, digest)
        stats.merge(shard_stats)
        self.computed.add((stage_name, shard))
        return outputs

    def run_shards(self, stage_name: str, recipe: StageRecipe,
                   shards: Sequence[tuple[int, Sequence[Record]]], depends: str = "") -> dict[int, list[Record]]:
        """A model stage over several shards (independent of each other); outputs by shard number.

        Here one after another with the stage built once; the Ray executor spreads them over its actors.
        """
        stage: list[Stage] = []

        def make() -> Stage:
            if not stage:
                stage.append(recipe.build(self.backends))
            return stage[0]

        return {shard: self.run(stage_name, make, shard, records, recipe.output_type,  # type: ignore[misc]
                                depends=depends) for shard, records in shards}

    def _show_rate(self, task: TaskID, total: StageStats, shard: StageStats) -> None:
        seconds = total.seconds + shard.seconds
        tokens = total.completion_tokens + shard.completion_tokens
        rows = total.rows_in + shard.rows_in
        rate = f"{rows / seconds:5.2f} rows/s" if seconds else ""
        if tokens:
            rate += f"  {tokens / seconds:5.1f} tok/s"
        self.progress.update(task, rate=rate)

    def _task(self, stage_name: str) -> TaskID:
        if stage_name not in self._tasks:
            self._tasks[stage_name] = self.progress.add_task(stage_name, total=0, stage=stage_name, rate="")
        return self._tasks[stage_name]

    def _index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task)
