"""A live progress bar per stage: rows done of rows known so far, rows/s and generated tokens/s."""

from __future__ import annotations

import threading

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

from fineinstructions.stages.base import StageStats


class StageProgress:
    """One bar per stage; totals grow as shards become known (documents stream)."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.bars = Progress(
            TextColumn("[bold]{task.fields[stage]:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()  # a rank's overlapped stages report from their own threads

    def start(self) -> None:
        self.bars.start()

    def stop(self) -> None:
        self.bars.stop()

    def expect(self, stage: str, rows: int) -> None:
        """Grow a stage's total by `rows`."""
        task = self._task(stage)
        with self._lock:
            current = next(t for t in self.bars.tasks if t.id == task).total or 0
            self.bars.update(task, total=current + rows)

    def advance(self, stage: str, rows: int) -> None:
        self.bars.advance(self._task(stage), rows)

    def show_rate(self, stage: str, total: StageStats, shard: StageStats | None = None) -> None:
        """Rows/s and generated tokens/s of `total` plus the shard in progress."""
        shard = shard or StageStats()
        seconds = total.seconds + shard.seconds
        tokens = total.completion_tokens + shard.completion_tokens
        rows = total.rows_in + shard.rows_in
        rate = f"{rows / seconds:5.2f} rows/s" if seconds else ""
        if tokens and seconds:
            rate += f"  {tokens / seconds:5.1f} tok/s"
        self.bars.update(self._task(stage), rate=rate)

    def _task(self, stage: str) -> TaskID:
        with self._lock:
            if stage not in self._tasks:
                self._tasks[stage] = self.bars.add_task(stage, total=0, stage=stage, rate="")
            return self._tasks[stage]
