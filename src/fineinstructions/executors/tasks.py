"""Running a step's tasks outside the driver: local child processes, and the entry point every task process
(a child, a Ray task, a Slurm array task) goes through.

A task process logs to its own file (`logs/<step>-rank-NNNNN.log`), holds its own engines for its whole life
and exits; its outputs and marker are on disk. A child that dies (killed, out of memory) costs only its
unfinished shard: the others run on, and the driver reports which tasks failed once all have ended, so a
rerun redoes only those.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fineinstructions.errors import FineInstructionsError

if TYPE_CHECKING:
    from fineinstructions.ranks.steps import Step


class TaskFailed(FineInstructionsError):
    """Some tasks of a step ended without their marker; the finished work is kept and a rerun resumes."""


def run_task(step: Step, task: int) -> None:
    """Run one task of `step` in this (task) process, logging to the task's own log file."""
    from fineinstructions.pipeline import configure_logging

    configure_logging()
    limit_threads(step.job.config.run.cpus_per_worker)
    path = step.job.folder.rank_log(task, step.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("fineinstructions")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        step.run(task)
    except BaseException:
        logging.getLogger(__name__).exception("%s task %d failed", step.name, task)
        raise
    finally:
        package.removeHandler(handler)
        handler.close()


def limit_threads(cpus: float) -> None:
    """Hold this task process's math libraries (BLAS, OpenMP in FAISS and torch) to its share of the CPUs:
    several ranks on one machine otherwise oversubscribe the cores, and small matrix products then wait
    milliseconds for threads that another rank's work keeps off the CPU."""
    threads = max(1, int(cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; a slim install may lack it
        return
    torch.set_num_threads(threads)


def failure_message(step: Step, failed: dict[int, str]) -> str:
    names = ", ".join(f"{task} ({why})" for task, why in sorted(failed.items())[:10])
    more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
    return (f"{len(failed)} {step.name} task(s) failed: {names}{more}; their logs are in "
            f"{step.job.folder.root / 'logs'}. Finished work is kept: rerun the same command to resume.")


def run_in_processes(step: Step, tasks: Sequence[int], workers: int,
                     on_done: Callable[[int], None] | None = None) -> None:
    """Run `tasks` in fresh child processes (spawned: no engine state is inherited), `workers` at a time."""
    context = multiprocessing.get_context("spawn")
    waiting = list(tasks)
    running: dict[int, Any] = {}  # task -> its child process
    failed: dict[int, str] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                task = waiting.pop(0)
                running[task] = context.Process(target=run_task, args=(step, task), name=f"{step.name}-{task}")
                running[task].start()
            time.sleep(0.05)
            for task, process in list(running.items()):
                if process.exitcode is None:
                    continue
                del running[task]
                if process.exitcode != 0 or not step.done(task):
                    failed[task] = (f"killed by signal {-process.exitcode}" if process.exitcode < 0
                                    else f"exit {process.exitcode}")
                elif on_done is not None:
                    on_done(task)
    finally:
        for process in running.values():  # the driver is stopping: do not leave orphans writing the folder
            process.terminate()
            process.join(5)
    if failed:
        raise TaskFailed(failure_message(step, failed))


def task_environment() -> dict[str, str]:
    """Variables a task process needs from the driver's environment (custom modules, offline Hub)."""
    path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    return {"PYTHONPATH": path, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
