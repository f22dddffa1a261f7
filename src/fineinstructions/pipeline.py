"""The whole FineInstructions pipeline, from queries and documents to the filtered dataset.

    queries --query_filter--> --templatize--> --template_dedup--> templates --index--> FAISS index
    documents --match(index)--> matches --instantiate--> pairs --judge--> judged --filter--> dataset

The pipeline owns the order and the data flow; each stage builds itself from the config
(stages/registry.py), the executor runs it over shards (executors/base.py), and the run folder owns
every path (io/run_folder.py). Queries are processed in shards by the driver. The documents are split
into `run.ranks` slices, and the document phase runs as steps of independent tasks (ranks/steps.py):
each rank takes its slice through match, instantiate, judge and filter with its own engines; pair
dedup across ranks works on compact signatures; each rank writes its dataset parts. The driver holds
no documents or pairs: the summary merges the tasks' stats files and streams the dataset's parts.
"""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq
import yaml
from rich.console import Console

from fineinstructions.backends.cache import RequestCache
from fineinstructions.backends.factory import BackendPool
from fineinstructions.config import PipelineConfig, SourceConfig
from fineinstructions.errors import ConfigError
from fineinstructions.executors.base import Executor, make_executor
from fineinstructions.executors.commit import batched, chunked
from fineinstructions.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from fineinstructions.io.readers import ReadStats, read_rows
from fineinstructions.io.rows import rows_to_records, rows_to_templates
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.io.sources import (
    bank_file,
    demo_documents,
    demo_queries,
    sample,
    sharegpt_queries,
    topical_demo_sample,
)
from fineinstructions.ranks.steps import GenerateStep, RunJob, WriteStep, makes_pairs, run_steps
from fineinstructions.records import Document, Query, Record, Template
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex, build_index
from fineinstructions.stages.registry import StageSpec
from fineinstructions.summary import DatasetTally, RecipeTally, build_summary

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R", bound=Record)


def load_queries(source: SourceConfig, stats: ReadStats) -> list[Query]:
    if source.kind == "sharegpt":
        if source.information_seeking:
            return demo_queries(source.limit or 10**9, source.seed)
        return sample(list(sharegpt_queries()), source.limit, source.seed)
    if source.kind == "wikipedia":
        raise ConfigError("the wikipedia source holds documents, not queries")
    rows = source_rows(source, stats)
    return list(rows_to_records(rows, Query, source.text_field, source.id_field, None,
                                source=_source_name(source), stats=stats, limit=source.limit))


def load_documents(source: SourceConfig, stats: ReadStats, part: tuple[int, int] | None = None) -> Iterable[Document]:
    """The documents of a source (rank `part[0]`'s slice of `part[1]`); files, folders and `hf:` datasets are
    streamed, never held whole. `limit` applies to the whole source: each rank reads its share of it."""
    if source.kind == "wikipedia":
        return demo_documents(source.limit or 10**9, source.seed)
    if source.kind == "sharegpt":
        raise ConfigError("the sharegpt source holds queries, not documents")
    rows = source_rows(source, stats, part)
    limit = source.limit
    if limit is not None and part is not None:
        limit = limit // part[1] + (1 if part[0] < limit % part[1] else 0)
    return rows_to_records(rows, Document, source.text_field, source.id_field, source.title_field,
                           source=_source_name(source), stats=stats, limit=limit)


def run_documents(config: PipelineConfig, stats: ReadStats, embedder: Any) -> Iterable[Document]:
    """Every document of a run in read order, as its ranks draw them (the demo's topical sample included)."""
    if demo_pairing(config):
        return topical_demo_documents(config, embedder)
    return load_documents(config.documents, stats)


def source_rows(source: SourceConfig, stats: ReadStats, part: tuple[int, int] | None = None
                ) -> Iterator[dict[str, Any]]:
    """The raw rows of a file, folder, fsspec URL or `hf:` source, with its Hugging Face settings; `part` =
    (rank, ranks) reads only that rank's slice (by file, Parquet row group or JSONL byte range; see `read_rows`)."""
    path = str(bank_file(source.path)) if source.kind == "bank" else source.path or ""
    return read_rows(path, source.split, stats, source.hf_config, source.revision, source.data_files,
                     part=part if part is not None and part[1] > 1 else None)


def demo_pairing(config: PipelineConfig) -> bool:
    """Whether the run is the demo's: questions chosen so that packaged Wikipedia leads answer them."""
    return (config.queries is not None and config.queries.kind == "sharegpt"
            and config.documents.kind == "wikipedia" and bool(config.documents.near_queries))


def topical_demo_documents(config: PipelineConfig, embedder: Any) -> list[Document]:
    """The demo's documents (`demo_pairing`), as every rank draws them again."""
    assert config.queries is not None
    return topical_demo_sample(config.queries.limit or 24, config.documents.limit or 12, embedder,
                               config.queries.seed)[1]


def _source_name(source: SourceConfig) -> str:
    return Path(source.path or "").stem if not (source.path or "").startswith("hf:") else (source.path or "")[3:]


class Pipeline:
    """Runs a PipelineConfig into its output folder; rerunning the same config resumes it."""

    def __init__(self, config: PipelineConfig, console: Console | None = None, show_progress: bool = True,
                 force: bool = False):
        self.config = config
        self.folder = RunFolder(config.run.output_dir)
        self.root = self.folder.root
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.force = force
        self.fingerprint = config.fingerprint()
        # Engines, the embedder and the index of this process; the request cache joins once the folder is claimed.
        self.context = StageContext(config, self.fingerprint, BackendPool(), index_dir=self.folder.index)
        self.backends = self.context.backends
        self.index_key = ""

    def spec(self, stage: str) -> StageSpec:
        """What an executor needs to run `stage` of this run, wherever it runs."""
        return StageSpec(stage, self.config, self.fingerprint, str(self.folder.stage_dir(stage)))

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage; return the summary, also written to summary.json.

        The folder must be empty, new or one of this project's run folders, outside the inputs; the run holds
        an exclusive lock on it from before the fingerprint check to the end (a second run is refused)."""
        cfg = self.config
        self.folder.open([s.path or "" for s in (cfg.queries, cfg.documents, cfg.templates)
                          if s is not None and s.kind == "path"])
        _buffer_log()
        try:
            summary = self._run()
        except BaseException:
            self.folder.close(failed=True)  # a folder this run made and never claimed (bad inputs) goes again
            raise
        finally:
            _detach_log_file()
        self.folder.close()
        return summary

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.folder.check(self.fingerprint, self.force)
        cfg = self.config
        read_stats = {"queries": ReadStats(), "templates": ReadStats()}
        load_documents(cfg.documents, ReadStats())  # a bad documents path fails here, before the folder is claimed
        pairs = makes_pairs(cfg)
        queries = self._queries(read_stats["queries"]) if pairs else []
        self._claim_folder()  # after the inputs opened: a bad path leaves no run folder behind
        ranks = cfg.run.ranks
        made = f"{len(queries)} queries" if pairs else f"recipe {cfg.recipe}"
        self.console.log(f"{made}; documents in {ranks} rank{'s' if ranks > 1 else ''} -> {self.root}")
        index = None
        try:
            with make_executor(cfg, self.context, self.console, self.show_progress) as ex:
                if pairs:  # a baseline recipe reads the documents only: no templates, no index
                    if cfg.templates is not None and cfg.queries is None and not cfg.match.deduplicate_bank:
                        index = self._streamed_bank_index(read_stats)
                    else:
                        index = self._index(self._templates(ex, queries, read_stats))
                    if cfg.match.hub_damping:  # computed once here and stored beside the index for every rank
                        where = "the run's first" if cfg.match.hub_reference == "documents" else "Wikipedia"
                        self.console.log(f"hub bias from up to {cfg.match.hub_sample} reference documents ({where})")
                        _ = self.context.hub_bias
                job = RunJob(cfg, self.fingerprint, self.index_key)
                for step_type in run_steps(cfg):
                    step = step_type(job)
                    pending = step.pending()
                    if pending:
                        ex.run_tasks(step, pending)
                stage_stats = dict(ex.stats)
        finally:
            self.context.close()
        # The summary merges the tasks' stats files and streams the dataset's parts: no pair is held in memory.
        documents, document_stats = merge_task_stats(job, stage_stats)
        read_stats["documents"] = document_stats
        summary = build_summary(
            config=cfg, fingerprint=self.fingerprint, stage_stats=stage_stats,
            dataset=(DatasetTally if pairs else RecipeTally).from_files(self.folder.dataset_files()),
            dataset_dir=self.folder.dataset, read_stats=read_stats, index=index,
            elapsed_s=time.perf_counter() - started, inputs={"queries": len(queries), "documents": documents},
        )
        write_json_atomic(self.folder.summary_file, summary)
        if pairs:
            log.info("run finished: %d pairs kept", summary["quality"]["pairs"])
        else:
            log.info("run finished: %d %s texts", summary["quality"]["texts"], cfg.recipe)
        return summary

    def _claim_folder(self) -> None:
        """Bind the folder to this config (a forced run over another config first clears what that run derived;
        the request cache stays: it is keyed by each request), log to its run.log, and open its request cache."""
        self.folder.claim(self.fingerprint, self.config.to_yaml(), self.force, derived=DERIVED)
        _attach_log_file(self.folder.log_file)
        log.info("run %s (config %s) in %s", time.strftime("%Y-%m-%d %H:%M:%S"), self.fingerprint, self.root)
        if self.config.run.request_cache and self.backends.cache is None:
            self.backends.cache = RequestCache(self.folder.request_cache)

    # -- stages ---------------------------------------------------------------------------------------

    def build_bank(self, output: str | Path) -> dict[str, Any]:
        """Only the query phase (query filter -> templatize -> template dedup, resumable shard by shard like a
        run) into one template bank: `output` (Parquet, zstd) and a manifest beside it (`.json`: the config,
        its fingerprint, the model, the prompt version, the funnel). Rows hold each template and the id of the
        query it came from, not the query's text. Rerunning finishes what is missing and rewrites the bank."""
        cfg = self.config
        if cfg.queries is None:
            raise ConfigError("building a bank needs `queries` to templatize")
        output = Path(output)
        started = time.perf_counter()
        self.folder.open([s.path or "" for s in (cfg.queries,) if s.kind == "path"])
        _buffer_log()
        try:
            self.folder.check(self.fingerprint, self.force)
            read_stats = {"queries": ReadStats(), "templates": ReadStats()}
            queries = self._queries(read_stats["queries"])
            self._claim_folder()
            self.console.log(f"{len(queries)} queries -> template bank {output}")
            try:
                with make_executor(cfg, self.context, self.console, self.show_progress) as ex:
                    templates = self._templates(ex, queries, read_stats)
                    stage_stats = dict(ex.stats)
            finally:
                self.context.close()
            table = Template.to_table(templates).drop_columns(["query", "completion_tokens"])
            output.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(output) as tmp:
                pq.write_table(table.sort_by("template_id"), tmp, compression="zstd", compression_level=19)
            backend = cfg.backend_for("templatize")
            manifest = {
                "templates": len(templates), "queries": len(queries), "fingerprint": self.fingerprint,
                "model": backend.model, "engine": backend.kind, "prompt_version": cfg.templatize.prompt_version,
                "built": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - started, 1),
                "funnel": {name: stats.to_dict() for name, stats in stage_stats.items()},
                "config": yaml.safe_load(cfg.to_yaml()),
            }
            write_json_atomic(output.with_suffix(".json"), manifest)
        except BaseException:
            self.folder.close(failed=True)
            raise
        finally:
            _detach_log_file()
        self.folder.close()
        log.info("bank written: %d templates from %d queries -> %s", len(templates), len(queries), output)
        return manifest

    def _queries(self, stats: ReadStats) -> list[Query]:
        """The queries to templatize (none without a `queries` source; the demo's are paired with its leads)."""
        cfg = self.config
        if cfg.queries is None:
            return []
        if demo_pairing(cfg):
            return topical_demo_sample(cfg.queries.limit or 24, cfg.documents.limit or 12,
                                       self.context.embedder, cfg.queries.seed)[0]
        return load_queries(cfg.queries, stats)

    def _templates(self, ex: Executor, queries: list[Query], read_stats: dict[str, ReadStats]) -> list[Template]:
        """The run's templates, near-duplicates removed: the queries' own first (so that a live query's template
        stays when a bank holds the same one), then the ready bank's."""
        templates: list[Template] = []
        if self.config.queries is not None:
            templates += self._templatize(ex, self._filter_queries(ex, queries))
        if self.config.templates is not None:
            templates += self._bank(read_stats)
        return self._one_shard(ex, "template_dedup", templates)

    def _one_shard(self, ex: Executor, stage: str, records: Sequence[R]) -> list[R]:
        """A stage over all `records` as one shard (a stage that compares every row with every other)."""
        return ex.run(self.spec(stage), [(0, records)])[0]  # type: ignore[return-value]

    def _filter_queries(self, ex: Executor, queries: list[Query]) -> list[Query]:
        """Query filters and deduplication over the whole query set (one shard)."""
        if not self.config.query_filter.enabled:
            return queries
        return self._one_shard(ex, "query_filter", queries)

    def _templatize(self, ex: Executor, queries: list[Query]) -> list[Template]:
        shards = chunked(queries, self.config.run.shard_size)
        outputs = ex.run(self.spec("templatize"), list(enumerate(shards)))
        return [t for shard in sorted(outputs) for t in outputs[shard]]  # type: ignore[misc]

    def _bank(self, read_stats: dict[str, ReadStats]) -> list[Template]:
        """A ready template bank (ours or the released FineTemplates) instead of templatizing queries."""
        source = self.config.templates
        assert source is not None
        rows = source_rows(source, read_stats["templates"])
        return list(rows_to_templates(rows, read_stats["templates"], source.limit))

    def _streamed_bank_index(self, read_stats: dict[str, ReadStats]) -> TemplateIndex | ShardedTemplateIndex:
        """A bank already deduplicated (the released FineTemplates: ~18M) into the index in bounded memory: the
        templates stream as Arrow batches of validated rows into `build_bank_index`, twice (a content digest
        names the index, then the build), never all as Python objects."""
        from fineinstructions.stages.bank import build_bank_index

        mc, source, embedder = self.config.match, self.config.templates, self.context.embedder
        assert source is not None
        if mc.index_shards > 1:
            raise ConfigError("match.index_shards applies to banks deduplicated in memory; a streamed bank "
                              "(match.deduplicate_bank: false) is one index")

        def batches(stats: ReadStats) -> Iterator[Any]:
            rows = source_rows(source, stats)
            for chunk in batched(rows_to_templates(rows, stats, source.limit), 65_536):
                yield Template.to_table(chunk)

        content = hashlib.sha256()
        for table in batches(ReadStats()):
            for column in ("template_id", "template", "compatible_document_description"):
                for value in table.column(column).to_pylist():
                    content.update(value.encode() + b"\x00")
        want = hashlib.sha256("|".join(["streamed", mc.index, str(mc.train_size), embedder.fingerprint,
                                        content.hexdigest(), *_text_key(mc.template_text)]).encode()).hexdigest()
        stamp = self.folder.index_stamp
        if not (stamp.is_file() and stamp.read_text().strip() == want and self.folder.index.is_dir()):
            self.console.log(f"indexing the template bank {source.path} with {embedder.model_id} (streamed)")
            stamp.unlink(missing_ok=True)
            build_bank_index(batches(read_stats["templates"]), embedder, self.folder.index, mc.index,
                             mc.train_size, deduplicate=False, text=mc.template_text)
            write_text_atomic(stamp, want + "\n")
        self.index_key = want
        return self.context.index

    def _index(self, templates: list[Template]) -> TemplateIndex | ShardedTemplateIndex:
        """The FAISS index of the templates, reused while its key holds: the templates, the embedding model
        and the index settings (the match shards depend on the same key)."""
        mc = self.config.match
        embedder = self.context.embedder
        content = hashlib.sha256()
        for t in sorted(templates, key=lambda t: t.template_id):
            content.update(f"{t.template_id}\x00{t.template}\x00{t.compatible_document_description}\x00".encode())
        key = "|".join([mc.index, str(mc.index_shards), str(mc.train_size), embedder.fingerprint,
                        content.hexdigest(), *_text_key(mc.template_text)])
        stamp, index_dir = self.folder.index_stamp, self.folder.index
        want = hashlib.sha256(key.encode()).hexdigest()
        self.index_key = want
        index: TemplateIndex | ShardedTemplateIndex
        if stamp.is_file() and stamp.read_text().strip() == want and index_dir.is_dir():
            index = self.context.index  # the saved index, loaded as every worker loads it
        else:
            self.console.log(f"indexing {len(templates)} templates with {embedder.model_id} ({mc.index})")
            stamp.unlink(missing_ok=True)  # a kill while saving must not leave a stamp over a half-new index
            index = build_index(templates, embedder, mc.index, mc.index_shards, mc.train_size, mc.template_text)
            index.configure(mc.nprobe, mc.ef_search, mc.refine_k_factor)
            index.save(index_dir)
            write_text_atomic(stamp, want + "\n")
        self.context.use_index(index, want)
        return index

def _text_key(text: str) -> list[str]:
    """The index key's part for `match.template_text` (none for "description", so the keys of indexes built
    before the setting existed hold)."""
    return [] if text == "description" else [f"text={text}"]


# What a run derives from its config: cleared when a forced run replaces another config's run.
DERIVED = ("work", "dataset", "index", "report", "index.sha", "summary.json", "logs")


def merge_task_stats(job: RunJob, stage_stats: dict[str, StageStats]) -> tuple[int, ReadStats]:
    """Add every rank's stage stats (generate and write markers) into `stage_stats`; return the documents read
    and the documents' read skips, summed over the ranks."""
    documents, read_stats = 0, ReadStats()
    for step_type in (GenerateStep, WriteStep):
        step = step_type(job)
        for task in range(step.tasks()):
            marker = step.marker(task) or {}
            for name, stats in marker.get("stages", {}).items():
                stage_stats.setdefault(name, StageStats()).merge(StageStats.from_dict(stats))
            documents += int(marker.get("documents", 0))
            read_stats.skipped.update(marker.get("read_skips", {}))
            read_stats.ignored_files.update(marker.get("ignored_files", {}))
    return documents, read_stats


def configure_logging(verbose: bool = False) -> None:
    """Warnings (everything with `verbose`) to stderr; a run also logs everything to its run.log."""
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fineinstructions").setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RUN_LOG = "fineinstructions-run-log"


def _buffer_log() -> None:
    """Hold this package's messages (info and up) until the run folder is claimed and its run.log opens."""
    package = logging.getLogger("fineinstructions")
    _detach_log_file()
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    buffer.setLevel(logging.INFO)
    buffer.set_name(_RUN_LOG)
    package.addHandler(buffer)
    if package.level == logging.NOTSET or package.level > logging.INFO:
        package.setLevel(logging.INFO)


def _attach_log_file(path: Path) -> None:
    """Log this package's messages to the run folder's run.log (appended across resumes), starting with those
    held since the run started (e.g. the input rows it skipped)."""
    package = logging.getLogger("fineinstructions")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    handler.setLevel(logging.INFO)
    for held in [h for h in package.handlers if h.get_name() == _RUN_LOG]:
        if isinstance(held, logging.handlers.MemoryHandler):
            held.setTarget(handler)
            held.flush()
        package.removeHandler(held)
        held.close()
    handler.set_name(_RUN_LOG)
    package.addHandler(handler)
    if package.level == logging.NOTSET or package.level > logging.INFO:
        package.setLevel(logging.INFO)


def _detach_log_file() -> None:
    package = logging.getLogger("fineinstructions")
    for handler in list(package.handlers):
        if handler.get_name() == _RUN_LOG:
            package.removeHandler(handler)
            handler.close()


