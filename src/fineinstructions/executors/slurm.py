"""Run a step's tasks as a Slurm job array: one array task per rank (or dedup task), submitted with `sbatch`.

The driver (on a login node, or itself a small job) runs the query stages, builds the index, then submits
each step as one array whose tasks run `fineinstructions task RUN_FOLDER STEP $SLURM_ARRAY_TASK_ID`: the
same task code as every other executor, reading the run's config from the run folder, which must be on
storage every node sees. The driver submits a step's array once the previous step has finished
(`sbatch --wait`), then submits only the tasks without a marker. The scripts stay in `slurm/` in the run
folder, so a step can also be (re)submitted by hand; a task whose marker exists exits at once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fineinstructions.executors.base import Executor, Shards
from fineinstructions.executors.local import LocalExecutor
from fineinstructions.executors.progress import StageProgress
from fineinstructions.executors.tasks import TaskFailed, failure_message
from fineinstructions.records import Record
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import StageSpec

if TYPE_CHECKING:
    from fineinstructions.ranks.steps import Step


class SlurmExecutor(Executor):
    """Query stages in the driver; each step's tasks as a Slurm array."""

    def __init__(self, context: StageContext, batch_size: int = 8, progress: StageProgress | None = None,
                 cpus_per_task: float = 1.0, gpus_per_task: float = 0.0, time_limit: str = "24:00:00",
                 options: Sequence[str] = (), retry_engine_failures: bool = True, sbatch: str = "sbatch"):
        self.driver = LocalExecutor(context, batch_size, progress, retry_engine_failures)
        self.progress = self.driver.progress
        self.stats = self.driver.stats
        self.computed = self.driver.computed
        self.cpus_per_task = max(1, round(cpus_per_task))
        self.gpus_per_task = int(gpus_per_task)
        self.time_limit = time_limit
        self.options = list(options)
        self.sbatch = os.environ.get("FINEINSTRUCTIONS_SBATCH", sbatch)

    def __enter__(self) -> SlurmExecutor:
        self.driver.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.driver.__exit__(*exc)

    def run(self, spec: StageSpec, shards: Shards, depends: str = "") -> dict[int, list[Record]]:
        return self.driver.run(spec, shards, depends)

    def run_tasks(self, step: Step, tasks: Sequence[int]) -> None:
        """Submit the tasks as one array and wait for it; report the tasks that left no marker."""
        script = write_script(step, tasks, self.cpus_per_task, self.gpus_per_task if step.holds_model else 0,
                              self.time_limit, self.options)
        self.progress.expect(f"{step.name} tasks (slurm)", len(tasks))
        result = subprocess.run([self.sbatch, "--parsable", "--wait", str(script)], capture_output=True, text=True)
        failed = {task: "no marker (see its slurm log)" for task in tasks if not step.done(task)}
        self.progress.advance(f"{step.name} tasks (slurm)", len(tasks) - len(failed))
        if result.returncode != 0 and not failed:
            raise TaskFailed(f"sbatch failed (exit {result.returncode}): {result.stderr.strip() or result.stdout}")
        if failed:
            raise TaskFailed(failure_message(step, failed))


def array_spec(tasks: Sequence[int]) -> str:
    """Slurm's `--array` list for these task ids, ranges compressed: [0, 1, 2, 5] -> "0-2,5"."""
    ids = sorted(set(tasks))
    spans: list[str] = []
    start = prev = ids[0]
    for task in [*ids[1:], None]:
        if task is not None and task == prev + 1:
            prev = task
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if task is not None:
            start = prev = task
    return ",".join(spans)


def write_script(step: Step, tasks: Sequence[int], cpus: int, gpus: int, time_limit: str,
                 options: Sequence[str]) -> Path:
    """The sbatch script of one step's array (in the run folder's `slurm/`)."""
    folder = step.job.folder
    root = folder.root.resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=fineinstructions-{step.name}",
             f"#SBATCH --array={array_spec(tasks)}",
             f"#SBATCH --output={logs}/slurm-{step.name}-%a.out",
             f"#SBATCH --chdir={os.getcwd()}",
             f"#SBATCH --cpus-per-task={cpus}",
             f"#SBATCH --time={time_limit}",
             *([f"#SBATCH --gres=gpu:{gpus}"] if gpus else []),
             *(f"#SBATCH {option}" for option in options),
             "set -euo pipefail",
             f"exec {shlex.quote(sys.executable)} -m fineinstructions.cli task {shlex.quote(str(root))} "
             f"{step.name} \"$SLURM_ARRAY_TASK_ID\""]
    script = root / "slurm" / f"{step.name}.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("\n".join(lines) + "\n")
    return script
