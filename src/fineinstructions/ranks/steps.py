"""The document phase as steps of independent tasks, datatrove-style: generate (one task per rank), dedup
(one task per signature column and hash range), cluster (one task) and write (one task per rank).

    generate  rank r reads its slice of the documents and runs match -> instantiate -> judge -> filter on
              it (or a baseline recipe's one stage), shard by shard, with its own engines and request cache
              (the stages overlapped on consecutive windows when `overlaps_stages`); writes each kept pair's
              signature
    dedup     each task finds equal hashes in one column (exact, or one MinHash band) of every rank's signatures
    cluster   union-find over the duplicate edges: which pairs leave the dataset
    write     rank r streams its kept pairs, minus the duplicates, into parts of the target size

A baseline recipe's run has only generate and write (`run_steps`): its texts are not deduplicated.

A task is done when its marker (`work/steps/<step>/task-NNNNN.json`, written last) names the key of what
it was made from; a rerun runs only the tasks without such a marker, and inside a generate task only the
shards without a committed output. A step is a small picklable object, so the same task runs in this
process, in a local child process, as a Ray task or as a Slurm array task (`fineinstructions task`).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fineinstructions.errors import FineInstructionsError
from fineinstructions.executors.commit import batched
from fineinstructions.executors.overlap import pipelined
from fineinstructions.hashing import json_hash
from fineinstructions.io.atomic import atomic_path, write_json_atomic
from fineinstructions.io.run_folder import RunFolder, shard_output_path, shard_stats_path
from fineinstructions.ranks.parts import PartWriter
from fineinstructions.ranks.signatures import (
    column_edges,
    duplicates,
    row_rank,
    signature_columns,
    signatures,
)
from fineinstructions.records import Document, Pair, SyntheticText
from fineinstructions.stages.base import StageStats

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.executors.progress import StageProgress
    from fineinstructions.stages.context import StageContext

log = logging.getLogger(__name__)
GENERATE_STAGES = ("match", "instantiate", "judge", "filter")


def document_stages(config: PipelineConfig) -> tuple[str, ...]:
    """The stages a rank runs on its documents: FineInstructions' four, or the baseline recipe's one."""
    return GENERATE_STAGES if makes_pairs(config) else (config.recipe,)


def makes_pairs(config: PipelineConfig) -> bool:
    """Whether the run makes FineInstructions pairs (deduplicated across ranks) rather than a recipe's texts."""
    return config.recipe == "fineinstructions"


@dataclass(frozen=True)
class RunJob:
    """The run a step belongs to, as every task process needs it: config, fingerprint and index key."""

    config: PipelineConfig
    fingerprint: str
    index_key: str

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.config.run.output_dir)

    @classmethod
    def from_folder(cls, root: str | Path) -> RunJob:
        """The job of a claimed run folder (what a Slurm task or `fineinstructions task` starts from)."""
        from fineinstructions.config import PipelineConfig

        folder = RunFolder(root)
        if not (folder.config_file.is_file() and folder.fingerprint_file.is_file()):
            raise FineInstructionsError(f"{folder.root} is not a claimed run folder (no config.yaml and fingerprint)")
        config = PipelineConfig.from_yaml(folder.config_file)
        config.run.output_dir = str(folder.root)
        stamp = folder.index_stamp.read_text().strip() if folder.index_stamp.is_file() else ""
        return cls(config, folder.fingerprint_file.read_text().strip(), stamp)

    @property
    def ranks(self) -> int:
        return self.config.run.ranks


class Step(ABC):
    """A set of independent tasks; each writes its outputs and then its marker."""

    name: ClassVar[str]
    holds_model: ClassVar[bool] = False  # its tasks serve models: they get the workers' GPUs

    def __init__(self, job: RunJob):
        self.job = job

    @abstractmethod
    def tasks(self) -> int:
        """How many tasks the step has (numbered 0 .. tasks-1)."""

    @abstractmethod
    def key(self, task: int) -> str:
        """What a task's output depends on: a task is done when its marker names this key."""

    @abstractmethod
    def run(self, task: int, context: StageContext | None = None, progress: StageProgress | None = None) -> None:
        """Run one task (in whatever process) and write its marker last. `context` lends this process's engines
        and index (a task in the driver's process); `progress` shows its stages."""

    def marker_path(self, task: int) -> Path:
        return self.job.folder.step_marker(self.name, task)

    def marker(self, task: int) -> dict[str, Any] | None:
        path = self.marker_path(task)
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, task: int) -> bool:
        marker = self.marker(task)
        return marker is not None and marker.get("key") == self.key(task)

    def pending(self) -> list[int]:
        return [task for task in range(self.tasks()) if not self.done(task)]

    def commit(self, task: int, **fields: Any) -> None:
        write_json_atomic(self.marker_path(task), {"key": self.key(task)} | fields)

    def outputs(self, step: type[Step]) -> list[str]:
        """The `output` digest each task of an earlier `step` recorded (what this step is made from)."""
        earlier = step(self.job)
        return [str((earlier.marker(t) or {}).get("output", "")) for t in range(earlier.tasks())]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job.folder.root})"


class GenerateStep(Step):
    """Rank r: its documents through match, instantiate, judge and filter, then its pairs' signatures."""

    name = "generate"
    holds_model = True

    def tasks(self) -> int:
        return self.job.ranks

    def key(self, task: int) -> str:
        return json_hash([self.job.index_key, task, self.job.ranks])

    def done(self, task: int) -> bool:
        marker = self.marker(task)
        if marker is None or marker.get("key") != self.key(task):
            return False
        # A rank whose requests failed through the engine's fault is run again: only those requests are retried.
        return not (self.job.config.run.retry_engine_failures and marker.get("engine_failures", 0))

    def run(self, task: int, context: StageContext | None = None, progress: StageProgress | None = None) -> None:
        from fineinstructions.executors.local import LocalExecutor
        from fineinstructions.stages.registry import StageSpec

        started = time.perf_counter()
        job, folder = self.job, self.job.folder
        config = rank_config(job.config, task)
        own = rank_context(config, job, task, context)
        read_stats = _new_read_stats()
        executor = LocalExecutor(own, config.run.batch_size, progress, config.run.retry_engine_failures)
        stages = document_stages(config)
        specs = {stage: StageSpec(stage, config, job.fingerprint, str(folder.stage_dir(stage, task)))
                 for stage in stages}
        threshold = config.filter.near_duplicate_threshold
        seen = shards = 0
        output = []
        overlap = overlaps_stages(config)
        if overlap:  # engines are built here, in the rank's main thread, not in the threads that feed them
            for spec in specs.values():
                executor.build(spec)

        def first(group: Any) -> Any:
            return executor.run(specs[stages[0]], group, depends=job.index_key)

        def then(stage: str) -> Any:
            return lambda previous: executor.run(specs[stage], sorted(previous.items()))

        try:
            window = config.run.shards_in_flight or 2
            numbered = enumerate(batched(rank_documents(config, task, read_stats, own), config.run.shard_size))
            groups = iter(lambda: list(itertools.islice(numbered, window)), [])
            last_dir = Path(specs[stages[-1]].out_dir)
            # closing(): an error here stops the stage threads before the rank's cache closes below
            with closing(pipelined(groups, [first, *(then(stage) for stage in stages[1:])], overlap)) as windows:
                for group, kept in windows:
                    seen += sum(len(records) for _, records in group)
                    shards += len(group)
                    for shard, _ in group:
                        path = folder.signature_file(task, shard)
                        if makes_pairs(config) and (("filter", shard) in executor.computed or not path.is_file()):
                            table = signatures(kept[shard], task, shard, threshold)
                            with atomic_path(path) as tmp:
                                pq.write_table(table, tmp)
                        stored = json.loads(shard_stats_path(last_dir, shard).read_text())
                        output.append([shard, stored.get("input_digest", ""), len(kept[shard])])
        finally:
            own.close()  # the rank's request cache; a lender's engines stay open
        stats = executor.stats
        self.commit(task, documents=seen, shards=shards, output=json_hash(output), overlapped=overlap,
                    seconds=round(time.perf_counter() - started, 3), peak_rss_mb=peak_rss_mb(),
                    engine_failures=sum(s.engine_failures for s in stats.values()),
                    stages={name: stats[name].to_dict() for name in stages if name in stats},
                    read_skips=dict(read_stats.skipped), ignored_files=dict(read_stats.ignored_files))
        log.info("rank %d: %d documents in %d shards%s", task, seen, shards,
                 " (stages overlapped)" if overlap else "")


class DedupStep(Step):
    """One task per (signature column, hash range): the duplicate edges within it, across every rank."""

    name = "dedup"

    @property
    def columns(self) -> list[str]:
        return signature_columns(self.job.config.filter.near_duplicate_threshold)

    @property
    def partitions(self) -> int:
        return self.job.config.filter.dedup_partitions

    def tasks(self) -> int:
        return len(self.columns) * self.partitions

    def key(self, task: int) -> str:
        return json_hash([self.outputs(GenerateStep), task, self.columns, self.partitions])

    def run(self, task: int, context: StageContext | None = None, progress: StageProgress | None = None) -> None:
        column, partition = self.columns[task // self.partitions], task % self.partitions
        files = self.job.folder.signature_files()
        edges = column_edges(lambda columns: (pq.read_table(path, columns=columns) for path in files), column,
                             self.job.config.filter.near_duplicate_threshold, partition, self.partitions)
        with atomic_path(self.job.folder.dedup_edges(task)) as tmp:
            pq.write_table(edges, tmp)
        self.commit(task, edges=edges.num_rows, output=json_hash([self.key(task), edges.to_pydict()]))


class ClusterStep(Step):
    """Union-find over every dedup task's edges: the pairs that leave the dataset, and what each repeats."""

    name = "cluster"

    def tasks(self) -> int:
        return 1

    def key(self, task: int) -> str:
        return json_hash(self.outputs(DedupStep))

    def run(self, task: int, context: StageContext | None = None, progress: StageProgress | None = None) -> None:
        folder = self.job.folder
        removed = duplicates(pq.read_table(folder.dedup_edges(t)) for t in range(DedupStep(self.job).tasks()))
        with atomic_path(folder.dedup_removed) as tmp:
            pq.write_table(removed, tmp)
        self.commit(task, removed=removed.num_rows, output=json_hash([self.key(task), removed.num_rows,
                                                                      removed.column("row").to_pylist()]))


class WriteStep(Step):
    """Rank r: its kept pairs, minus the duplicates found across ranks, into dataset parts of the target size."""

    name = "write"

    def tasks(self) -> int:
        return self.job.ranks

    def key(self, task: int) -> str:
        run = self.job.config.run
        removed = self.outputs(ClusterStep) if makes_pairs(self.job.config) else []
        return json_hash([removed, self.outputs(GenerateStep)[task], run.part_bytes, run.part_rows])

    def run(self, task: int, context: StageContext | None = None, progress: StageProgress | None = None) -> None:
        folder, run = self.job.folder, self.job.config.run
        if not makes_pairs(self.job.config):
            return self._write_texts(task)
        generated = GenerateStep(self.job).marker(task) or {}
        removed = pq.read_table(folder.dedup_removed)
        mine = row_rank(removed.column("row").to_numpy()) == task
        reasons = dict(zip(removed.column("row").to_numpy()[mine].tolist(),
                           removed.column("reason").to_numpy(zero_copy_only=False)[mine].tolist(), strict=True))
        target = self._empty_target(task)
        stats = StageStats()
        rejected: list[dict[str, Any]] = []
        filter_dir = folder.stage_dir("filter", task)
        with PartWriter(target, Pair.arrow_schema(), run.part_bytes, run.part_rows) as writer:
            for shard in range(int(generated.get("shards", 0))):
                table = pq.read_table(shard_output_path(filter_dir, shard))
                rows = pq.read_table(folder.signature_file(task, shard), columns=["row"]).column("row").to_numpy()
                drop = np.array([row in reasons for row in rows.tolist()], dtype=bool)
                for i in np.flatnonzero(drop).tolist():
                    rejected.append({"document_id": table.column("document_id")[i].as_py(),
                                     "template_id": table.column("template_id")[i].as_py(),
                                     "row": int(rows[i]), "reason": reasons[int(rows[i])]})
                writer.write(table.filter(pa.array(~drop)))
                stats.rows_in += table.num_rows
                stats.rows_out += table.num_rows - int(drop.sum())
                stats.dropped.update(reasons[int(row)] for row in rows[drop].tolist())
        with atomic_path(folder.dedup_rejects(task)) as tmp:
            empty = pa.table({"reason": pa.array([], pa.string())})
            pq.write_table(pa.Table.from_pylist(rejected) if rejected else empty, tmp)
        self.commit(task, parts=writer.parts, stages={"dedup": stats.to_dict()})

    def _empty_target(self, task: int) -> Path:
        """The rank's dataset folder, emptied of what an interrupted write left (a rank that kept nothing has an
        empty folder)."""
        target = self.job.folder.dataset_rank(task)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target

    def _write_texts(self, task: int) -> None:
        """A baseline recipe's rank: its committed texts, as they are, into parts of the target size."""
        folder, config = self.job.folder, self.job.config
        generated = GenerateStep(self.job).marker(task) or {}
        target = self._empty_target(task)
        stage_dir = folder.stage_dir(config.recipe, task)
        with PartWriter(target, SyntheticText.arrow_schema(), config.run.part_bytes, config.run.part_rows) as writer:
            for shard in range(int(generated.get("shards", 0))):
                writer.write(pq.read_table(shard_output_path(stage_dir, shard)))
        self.commit(task, parts=writer.parts)


STEPS: tuple[type[Step], ...] = (GenerateStep, DedupStep, ClusterStep, WriteStep)
STEP_BY_NAME: dict[str, type[Step]] = {step.name: step for step in STEPS}


def run_steps(config: PipelineConfig) -> tuple[type[Step], ...]:
    """The steps of a run: all four for FineInstructions pairs; generate and write for a recipe's texts (a
    document's texts are its own: there is nothing to deduplicate across ranks)."""
    return STEPS if makes_pairs(config) else (GenerateStep, WriteStep)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (a rank in the driver's process reports the driver's)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def rank_config(config: PipelineConfig, rank: int) -> PipelineConfig:
    """The config rank `rank` runs with: its share of the corpus-wide template cap (see `template_budget`)."""
    cap = config.match.max_template_uses
    if cap is None or config.run.ranks == 1:
        return config
    copy = config.model_copy(deep=True)
    copy.match.max_template_uses = template_budget(cap, rank, config.run.ranks)
    return copy


def template_budget(cap: int, rank: int, ranks: int) -> int:
    """Rank `rank`'s uses of each template: the cap split as evenly as integers allow (the shares sum to the cap).

    No template is ever used more than `cap` times in the dataset. The price of not sharing counts between
    ranks: a template in demand on one rank only is used there at most ceil(cap / ranks) times, so it loses at
    most cap - ceil(cap / ranks) uses against one sequential run; a template in demand on every rank loses none.
    """
    return cap // ranks + (1 if rank < cap % ranks else 0)


def overlaps_stages(config: PipelineConfig) -> bool:
    """Whether a rank runs its stages on consecutive windows at once (`executors/overlap.py`).

    Never when one engine serves both instantiate and judge (its calls cannot overlap); else as
    `run.overlap_stages` says, and by default when both engines are servers (OpenAI-compatible) or batching
    engines on a GPU: there overlap keeps the GPU fed; on a CPU two engines would only share its cores."""
    instantiate, judge = config.backend_for("instantiate"), config.backend_for("judge")
    if not makes_pairs(config) or instantiate == judge:  # a recipe runs one model stage
        return False
    if config.run.overlap_stages is not None:
        return config.run.overlap_stages
    from fineinstructions.backends.auto import cuda_visible, resolved_kind
    from fineinstructions.stages.registry import CONCURRENT_ENGINES

    kinds = {resolved_kind(backend.kind) for backend in (instantiate, judge)}
    return kinds <= {"openai"} or (kinds <= CONCURRENT_ENGINES and cuda_visible())


def rank_context(config: PipelineConfig, job: RunJob, rank: int, lent: StageContext | None) -> StageContext:
    """The context a rank runs with: the lender's engines and index (a rank in the driver's process) behind the
    rank's own request cache, or, in a task process, its own engines and the index saved in the run folder."""
    from fineinstructions.backends.cache import RequestCache
    from fineinstructions.backends.factory import BackendPool
    from fineinstructions.stages.context import StageContext

    folder = job.folder
    cache = RequestCache(folder.rank_cache(rank), shared=False) if config.run.request_cache else None
    pool = lent.backends.sharing(cache) if lent is not None else BackendPool(cache)
    context = StageContext(config, job.fingerprint, pool, index_dir=folder.index,
                           engines=lent.engines if lent is not None else None)
    if lent is not None and makes_pairs(config):  # a recipe's rank needs neither index nor embedder
        context.use_index(lent.index, job.index_key)
        context.__dict__["embedder"] = lent.embedder  # the lender's embedder, not a second copy of the model
    context.index_key = job.index_key
    return context


def rank_documents(config: PipelineConfig, rank: int, stats: Any, context: StageContext) -> Iterator[Document]:
    """The documents of rank `rank` (its slice of the source; see `read_rows`' `part`)."""
    from fineinstructions.pipeline import load_documents, run_documents

    source, ranks = config.documents, config.run.ranks
    if source.kind != "wikipedia":
        return iter(load_documents(source, stats, part=(rank, ranks)))
    # The packaged Wikipedia sample (a few thousand leads): every rank draws it and takes every ranks-th.
    documents = run_documents(config, stats, context.embedder)
    return (doc for i, doc in enumerate(documents) if i % ranks == rank)


def _new_read_stats() -> Any:
    from fineinstructions.io.readers import ReadStats

    return ReadStats()


