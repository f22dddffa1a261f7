"""The whole FineInstructions pipeline, from queries and documents to the filtered dataset.

    queries --query_filter--> --templatize--> --template_dedup--> templates --index--> FAISS index
    documents --match(index)--> matches --instantiate--> pairs --judge--> judged --filter--> dataset

The pipeline owns the order and the data flow; each stage builds itself from the config
(stages/registry.py), the executor runs it over shards (executors/base.py), and the run folder owns
every path (io/run_folder.py). Queries are processed in shards; documents are processed in shards that
flow through match, instantiate, judge and filter together, so a document's pairs always meet in one
filter batch.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import logging.handlers
import os
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, TypeVar, cast

from rich.console import Console

from fineinstructions.backends.cache import RequestCache
from fineinstructions.backends.factory import BackendPool
from fineinstructions.config import PipelineConfig, SourceConfig
from fineinstructions.errors import ConfigError
from fineinstructions.executors.base import Executor, make_executor
from fineinstructions.executors.commit import chunked
from fineinstructions.io.atomic import write_json_atomic, write_text_atomic
from fineinstructions.io.readers import ReadStats, read_rows
from fineinstructions.io.rows import rows_to_records, rows_to_templates
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.io.sources import (
    demo_documents,
    demo_queries,
    sample,
    sharegpt_queries,
    topical_demo_sample,
)
from fineinstructions.io.writers import read_records, write_records
from fineinstructions.records import Document, Pair, Query, Record, Template
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex, build_index
from fineinstructions.stages.registry import StageSpec
from fineinstructions.summary import build_summary

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


def load_documents(source: SourceConfig, stats: ReadStats) -> Iterable[Document]:
    """The documents of a source; files, folders and `hf:` datasets are streamed, never held whole."""
    if source.kind == "wikipedia":
        return demo_documents(source.limit or 10**9, source.seed)
    if source.kind == "sharegpt":
        raise ConfigError("the sharegpt source holds queries, not documents")
    rows = source_rows(source, stats)
    return rows_to_records(rows, Document, source.text_field, source.id_field, source.title_field,
                           source=_source_name(source), stats=stats, limit=source.limit)


def source_rows(source: SourceConfig, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """The raw rows of a file, folder or `hf:` source, with its Hugging Face settings."""
    return read_rows(source.path or "", source.split, stats, source.hf_config, source.revision, source.data_files)


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
        read_stats = {"queries": ReadStats(), "documents": ReadStats(), "templates": ReadStats()}
        if cfg.templates is not None:
            queries: list[Query] = []
            documents = load_documents(cfg.documents, read_stats["documents"])
        elif cfg.queries is None:
            raise ConfigError("a run needs `queries` to templatize, or a ready `templates` bank")
        elif cfg.documents.kind == "wikipedia" and cfg.documents.near_queries and cfg.queries.kind == "sharegpt":
            queries, documents = topical_demo_sample(cfg.queries.limit or 24, cfg.documents.limit or 12,
                                                     self.context.embedder, cfg.queries.seed)
        else:
            queries = load_queries(cfg.queries, read_stats["queries"])
            documents = load_documents(cfg.documents, read_stats["documents"])
        self._claim_folder()  # after the inputs opened: a bad path leaves no run folder behind
        self.console.log(f"{len(queries)} queries and {_count(documents)} documents -> {self.root}")
        try:
            with make_executor(cfg, self.context, self.console, self.show_progress) as ex:
                if cfg.templates is not None:
                    templates = self._bank(read_stats)
                else:
                    templates = self._templatize(ex, self._filter_queries(ex, queries))
                templates = self._one_shard(ex, "template_dedup", templates)
                index = self._index(templates)
                documents_seen = self._documents(ex, documents)
                stage_stats = ex.stats
        finally:
            self.context.close()
        # The summary needs counts and scores, not the documents: their text stays on disk.
        dataset = cast(list[Pair], read_records(self.folder.dataset, Pair, without=("text",))
                       if self.folder.dataset.exists() else [])
        summary = build_summary(
            config=cfg, fingerprint=self.fingerprint, stage_stats=stage_stats, dataset=dataset,
            dataset_dir=self.folder.dataset, read_stats=read_stats, index=index,
            elapsed_s=time.perf_counter() - started, inputs={"queries": len(queries), "documents": documents_seen},
        )
        write_json_atomic(self.folder.summary_file, summary)
        log.info("run finished: %d pairs kept", len(dataset))
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

    def _index(self, templates: list[Template]) -> TemplateIndex | ShardedTemplateIndex:
        """The FAISS index of the templates, reused while its key holds: the templates, the embedding model
        and the index settings (the match shards depend on the same key)."""
        mc = self.config.match
        embedder = self.context.embedder
        content = hashlib.sha256()
        for t in sorted(templates, key=lambda t: t.template_id):
            content.update(f"{t.template_id}\x00{t.template}\x00{t.compatible_document_description}\x00".encode())
        key = "|".join([mc.index, str(mc.index_shards), str(mc.train_size), embedder.fingerprint,
                        content.hexdigest()])
        stamp, index_dir = self.folder.index_stamp, self.folder.index
        want = hashlib.sha256(key.encode()).hexdigest()
        self.index_key = want
        index: TemplateIndex | ShardedTemplateIndex
        if stamp.is_file() and stamp.read_text().strip() == want and index_dir.is_dir():
            index = self.context.index  # the saved index, loaded as every worker loads it
        else:
            self.console.log(f"indexing {len(templates)} templates with {embedder.model_id} ({mc.index})")
            stamp.unlink(missing_ok=True)  # a kill while saving must not leave a stamp over a half-new index
            index = build_index(templates, embedder, mc.index, mc.index_shards, mc.train_size)
            index.configure(mc.nprobe, mc.ef_search, mc.refine_k_factor)
            index.save(index_dir)
            write_text_atomic(stamp, want + "\n")
        self.context.use_index(index, want)
        return index

    def _documents(self, ex: Executor, documents: Iterable[Document]) -> int:
        """Match, instantiate, judge and filter the documents, shard by shard; return how many were read.

        Documents stream in windows of `run.shards_in_flight` shards, so memory holds one window. Each stage
        runs over the window's shards: independent shards spread over the executor's workers, while
        sequential stages (match under the corpus-wide template cap, the filter's pair dedup) run them in
        order, carrying their state: the output is the same whatever the executor, the number of workers
        or the window size.
        """
        cfg = self.config
        window = cfg.run.shards_in_flight or ex.default_window
        seen = 0
        shards = enumerate(batched(documents, cfg.run.shard_size))
        while group := list(itertools.islice(shards, window)):
            seen += sum(len(records) for _, records in group)
            matches = ex.run(self.spec("match"), group, depends=self.index_key)
            pairs = ex.run(self.spec("instantiate"), sorted(matches.items()))
            judged = ex.run(self.spec("judge"), sorted(pairs.items()))
            kept = ex.run(self.spec("filter"), sorted(judged.items()))
            for shard, _ in group:
                write_part(self.folder.dataset_part(shard), kept[shard])  # type: ignore[arg-type]
        return seen


# What a run derives from its config: cleared when a forced run replaces another config's run.
DERIVED = ("work", "dataset", "index", "report", "index.sha", "summary.json")


def write_part(part: Path, kept: list[Pair]) -> None:
    """Write a dataset part unless it already holds exactly these pairs (a resumed or retried shard)."""
    if part.is_file() and read_records(part, Pair) == kept:
        return
    write_records(part, kept, Pair)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), drawn lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _count(items: Iterable[object]) -> str:
    return str(len(items)) if isinstance(items, Sized) else "streamed"


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


