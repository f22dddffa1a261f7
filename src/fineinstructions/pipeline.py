"""The whole FineInstructions pipeline, from queries and documents to the filtered dataset.

    queries --query_filter--> --templatize--> --template_dedup--> templates --index--> FAISS index
    documents --match(index)--> matches --instantiate--> pairs --judge--> judged --filter--> dataset

Queries are processed in shards; documents are processed in shards that flow through match,
instantiate, judge and filter together, so a document's pairs always meet in one filter batch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from fineinstructions.backends.cache import RequestCache
from fineinstructions.backends.embeddings import Embedder
from fineinstructions.backends.factory import BackendPool
from fineinstructions.config import PipelineConfig, SourceConfig
from fineinstructions.executors.local import LocalExecutor, chunked
from fineinstructions.io.atomic import remove_stale_temporaries, write_json_atomic, write_text_atomic
from fineinstructions.io.readers import ReadStats, read_rows, rows_to_records, rows_to_templates
from fineinstructions.io.run_folder import (
    MARKER,
    RunFolderError,
    RunLock,
    check_claimable,
    check_outside_inputs,
    temporary_folders,
    write_marker,
)
from fineinstructions.io.sources import (
    demo_documents,
    demo_queries,
    sample,
    sharegpt_queries,
    topical_demo_sample,
)
from fineinstructions.io.writers import read_records, write_records
from fineinstructions.recipes import ModelStage, StageRecipe, request_cache_path
from fineinstructions.records import Document, Match, Pair, Query, Template
from fineinstructions.stages.filter import FilterStage
from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex, build_index
from fineinstructions.stages.match import MatchStage
from fineinstructions.stages.pair_dedup import PairDeduplicator
from fineinstructions.stages.query_filter import QueryFilterStage, load_eval_texts
from fineinstructions.stages.template_dedup import TemplateDedupStage
from fineinstructions.summary import build_summary
from fineinstructions.text.decontaminate import Decontaminator

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConfigChanged(RuntimeError):
    """The run folder holds a run made with another configuration."""


def load_queries(source: SourceConfig, stats: ReadStats) -> list[Query]:
    if source.kind == "sharegpt":
        if source.information_seeking:
            return demo_queries(source.limit or 10**9, source.seed)
        return sample(list(sharegpt_queries()), source.limit, source.seed)
    if source.kind == "wikipedia":
        raise ValueError("the wikipedia source holds documents, not queries")
    rows = source_rows(source, stats)
    return list(rows_to_records(rows, Query, source.text_field, source.id_field, None,
                                source=_source_name(source), stats=stats, limit=source.limit))  # type: ignore[arg-type]


def load_documents(source: SourceConfig, stats: ReadStats) -> Iterable[Document]:
    """The documents of a source; files, folders and `hf:` datasets are streamed, never held whole."""
    if source.kind == "wikipedia":
        return demo_documents(source.limit or 10**9, source.seed)
    if source.kind == "sharegpt":
        raise ValueError("the sharegpt source holds queries, not documents")
    rows = source_rows(source, stats)
    return rows_to_records(rows, Document, source.text_field, source.id_field, source.title_field,  # type: ignore[return-value]
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
        self.root = Path(config.run.output_dir)
        self.work = self.root / "work"
        self.dataset_dir = self.root / "dataset"
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.force = force
        self.fingerprint = config.fingerprint()
        self.backends = BackendPool()  # gets the run's request cache once the folder is claimed

    def _check_folder(self) -> bool:
        """Whether the folder holds another config's run (refused unless forced: ConfigChanged)."""
        marker = self.root / "fingerprint"
        if marker.is_file() and marker.read_text().strip() != self.fingerprint:
            if not self.force:
                raise ConfigChanged(
                    f"{self.root} holds a run with config fingerprint {marker.read_text().strip()}, "
                    f"this config is {self.fingerprint}: use another output folder, or --force to start over")
            return True
        return False

    def _claim_folder(self) -> None:
        """Write the config and fingerprint (once the inputs opened); a forced run with another config first
        clears everything derived from the old one (the request cache stays: it is keyed by each request)."""
        if self._check_folder():
            for derived in (self.work, self.dataset_dir, self.root / "index", self.root / "report"):
                shutil.rmtree(derived, ignore_errors=True)
            for derived_file in ("index.sha", "summary.json"):
                (self.root / derived_file).unlink(missing_ok=True)
        removed = remove_stale_temporaries(self.root, temporary_folders(self.root))
        if removed:
            log.info("removed %d temporary files left by a killed run", removed)
        write_marker(self.root)
        write_text_atomic(self.root / "config.yaml", self.config.to_yaml())
        write_text_atomic(self.root / "fingerprint", self.fingerprint + "\n")
        if self.config.run.request_cache and self.backends.cache is None:
            self.backends.cache = RequestCache(request_cache_path(self.root))

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage; return the summary, also written to summary.json.

        The folder must be empty, new or one of this project's run folders, outside the inputs; the run holds
        an exclusive lock on it from before the fingerprint check to the end (a second run is refused)."""
        cfg = self.config
        check_claimable(self.root)
        check_outside_inputs(self.root, [s.path or "" for s in (cfg.queries, cfg.documents, cfg.templates)
                                         if s is not None and s.kind == "path"])
        created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"cannot create the run folder {self.root}: {err.strerror or err}") from err
        lock = RunLock(self.root)
        try:
            lock.acquire()
            try:
                return self._run()
            except BaseException:
                if created and not (self.root / MARKER).exists():  # the inputs did not open: leave no folder
                    lock.release()
                    shutil.rmtree(self.root, ignore_errors=True)
                raise
        finally:
            lock.release()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self._check_folder()
        cfg = self.config
        read_stats = {"queries": ReadStats(), "documents": ReadStats(), "templates": ReadStats()}
        if cfg.templates is not None:
            queries: list[Query] = []
            documents = load_documents(cfg.documents, read_stats["documents"])
        elif cfg.queries is None:
            raise ValueError("a run needs `queries` to templatize, or a ready `templates` bank")
        elif cfg.documents.kind == "wikipedia" and cfg.documents.near_queries and cfg.queries.kind == "sharegpt":
            queries, documents = topical_demo_sample(cfg.queries.limit or 24, cfg.documents.limit or 12,
                                                     self.embedder, cfg.queries.seed)
        else:
            queries = load_queries(cfg.queries, read_stats["queries"])
            documents = load_documents(cfg.documents, read_stats["documents"])
        self._claim_folder()  # after the inputs opened: a bad path leaves no run folder behind
        self.console.log(f"{len(queries)} queries and {_count(documents)} documents -> {self.root}")
        try:
            with make_executor(cfg, self.work, self.console, self.show_progress, self.backends) as ex:
                if cfg.templates is not None:
                    templates = self._bank(read_stats)
                else:
                    templates = self._templatize(ex, self._filter_queries(ex, queries))
                templates = self._dedup_templates(ex, templates)
                index = self._index(templates)
                documents_seen = self._documents(ex, index, documents)
                stage_stats = ex.stats
        finally:
            self.backends.close()
        # The summary needs counts and scores, not the documents: their text stays on disk.
        dataset = read_records(self.dataset_dir, Pair, without=("text",)) if self.dataset_dir.exists() else []
        summary = build_summary(
            config=cfg, fingerprint=self.fingerprint, stage_stats=stage_stats, dataset=dataset,  # type: ignore[arg-type]
            dataset_dir=self.dataset_dir, read_stats=read_stats, index=index,
            elapsed_s=time.perf_counter() - started, inputs={"queries": len(queries), "documents": documents_seen},
        )
        write_json_atomic(self.root / "summary.json", summary)
        return summary

    # -- stages ---------------------------------------------------------------------------------------

    def _filter_queries(self, ex: LocalExecutor, queries: list[Query]) -> list[Query]:
        """Query filters and deduplication over the whole query set (one shard)."""
        qf = self.config.query_filter
        if not qf.enabled:
            return queries

        def make() -> QueryFilterStage:
            decontaminator = None
            if qf.decontaminate:
                decontaminator = Decontaminator(load_eval_texts(qf.decontaminate, qf.decontaminate_field),
                                                qf.decontaminate_ngram)
            return QueryFilterStage(qf.min_chars, qf.max_chars, qf.languages, qf.moderation, qf.moderation_terms,
                                    qf.moderation_patterns, decontaminator, qf.near_duplicate_threshold)

        ex.expect("query_filter", len(queries))
        return ex.run("query_filter", make, 0, queries, Query, whole_shard=True)  # type: ignore[return-value]

    def _templatize(self, ex: LocalExecutor, queries: list[Query]) -> list[Template]:
        cfg = self.config
        shards = chunked(queries, cfg.run.shard_size)
        ex.expect("templatize", len(queries))
        outputs = ex.run_shards("templatize", self._recipe("templatize"), list(enumerate(shards)))
        return [t for shard in sorted(outputs) for t in outputs[shard]]  # type: ignore[misc]

    def _recipe(self, stage: ModelStage) -> StageRecipe:
        return StageRecipe(stage, self.config, self.fingerprint)

    def _bank(self, read_stats: dict[str, ReadStats]) -> list[Template]:
        """A ready template bank (ours or the released FineTemplates) instead of templatizing queries."""
        source = self.config.templates
        assert source is not None
        rows = source_rows(source, read_stats["templates"])
        return list(rows_to_templates(rows, read_stats["templates"], source.limit))

    def _dedup_templates(self, ex: LocalExecutor, templates: list[Template]) -> list[Template]:
        threshold = self.config.templatize.near_duplicate_threshold
        ex.expect("template_dedup", len(templates))
        return ex.run("template_dedup", lambda: TemplateDedupStage(threshold), 0, templates, Template,  # type: ignore[return-value]
                      whole_shard=True)

    def _index(self, templates: list[Template]) -> TemplateIndex | ShardedTemplateIndex:
        """The FAISS index of the templates, reused while its key holds: the templates, the embedding model
        and the index settings (the match shards depend on the same key)."""
        mc = self.config.match
        index_dir = self.root / "index"
        embedder = self.embedder
        content = hashlib.sha256()
        for t in sorted(templates, key=lambda t: t.template_id):
            content.update(f"{t.template_id}\x00{t.template}\x00{t.compatible_document_description}\x00".encode())
        key = "|".join([mc.index, str(mc.index_shards), str(mc.train_size), embedder.fingerprint,
                        content.hexdigest()])
        stamp = self.root / "index.sha"
        want = hashlib.sha256(key.encode()).hexdigest()
        self.index_key = want
        if stamp.is_file() and stamp.read_text().strip() == want and index_dir.is_dir():
            return TemplateIndex.load(index_dir, embedder, nprobe=mc.nprobe, ef_search=mc.ef_search,
                                      refine_k_factor=mc.refine_k_factor)
        self.console.log(f"indexing {len(templates)} templates with {embedder.model_id} ({mc.index})")
        stamp.unlink(missing_ok=True)  # a kill while saving must not leave a stamp over a half-new index
        built = build_index(templates, embedder, mc.index, mc.index_shards, mc.train_size)
        built.configure(mc.nprobe, mc.ef_search, mc.refine_k_factor)
        built.save(index_dir)
        write_text_atomic(stamp, want + "\n")
        return built

    @property
    def embedder(self) -> Embedder:
        if not hasattr(self, "_embedder"):
            mc = self.config.match
            self._embedder = Embedder(mc.embedder, device=mc.embedder_device, batch_size=mc.embedder_batch_size,
                                      revision=mc.embedder_revision)
        return self._embedder

    def _documents(self, ex: LocalExecutor, index: TemplateIndex | ShardedTemplateIndex,
                   documents: Iterable[Document]) -> int:
        """Match, instantiate, judge and filter the documents, shard by shard; return how many were read.

        Documents stream in windows of `run.shards_in_flight` shards, so memory holds one window. Within
        a window, match runs shard by shard (the corpus-wide template cap depends on earlier shards;
        without a cap and with several workers, on the workers), the
        model stages run over the window's shards at once (spread over the executor's workers), and the
        filter runs shard by shard (pair dedup depends on earlier shards): the output is the same whatever
        the executor, the number of workers or the window size.
        """
        cfg = self.config
        mc = cfg.match
        uses: Counter[str] = Counter()  # template uses in earlier shards: the corpus-wide cap resumes exactly
        deduplicator = PairDeduplicator(cfg.filter.near_duplicate_threshold)  # pairs kept in earlier shards
        kept_before = hashlib.sha256()  # digest of the pairs kept in earlier shards
        window = cfg.run.shards_in_flight or ex.default_window
        seen = 0
        shards = enumerate(batched(documents, cfg.run.shard_size))
        while group := list(itertools.islice(shards, window)):
            seen += sum(len(records) for _, records in group)
            ex.expect("match", sum(len(records) for _, records in group))
            matches: list[tuple[int, list[Match]]] = []
            if mc.max_template_uses is None and ex.workers > 1:
                # No cap, so shards are independent: the workers map the saved index and match in parallel.
                found_by_shard = ex.run_shards("match", self._recipe("match"), group, depends=self.index_key)
                matches = [(shard, found_by_shard[shard]) for shard, _ in group]  # type: ignore[misc]
            else:
                for shard, records in group:
                    found = ex.run("match", lambda: MatchStage(
                        index, self.embedder, mc.top_k, mc.coverage_chunks, mc.sigma, mc.alpha, mc.min_score,
                        mc.per_vector_k, mc.mmr_lambda, mc.max_template_uses, mc.popularity_weight, mc.max_windows,
                        mc.min_document_words, mc.max_document_chars, prior_uses=uses), shard, records, Match,
                        depends=f"{self.index_key}|{_counter_digest(uses)}")
                    uses.update(m.template_id for m in found)  # type: ignore[attr-defined]
                    matches.append((shard, found))  # type: ignore[arg-type]
            ex.expect("instantiate", sum(len(m) for _, m in matches))
            pairs = ex.run_shards("instantiate", self._recipe("instantiate"), matches)
            ex.expect("judge", sum(len(p) for p in pairs.values()))
            judged = ex.run_shards("judge", self._recipe("judge"), sorted(pairs.items()))
            for shard, _ in group:
                ex.expect("filter", len(judged[shard]))
                # A document's pairs must meet in one filter batch, so the filter sees the whole shard.
                kept = ex.run("filter", lambda: FilterStage(
                    cfg.judge.min_score, cfg.instantiate.min_coverage, cfg.filter.token_budget,
                    cfg.filter.max_pairs_per_document, deduplicator), shard, judged[shard], Pair, whole_shard=True,
                    depends=kept_before.hexdigest())
                deduplicator.remember(kept)  # type: ignore[arg-type]  # idempotent; rebuilds the state on resume
                for pair in kept:  # what later shards' dedup depends on
                    kept_before.update(f"{pair.document_id}\x00{pair.template_id}\x00".encode())
                write_part(self.dataset_dir / f"part-{shard:05d}.parquet", kept)  # type: ignore[arg-type]
        return seen


def write_part(part: Path, kept: list[Pair]) -> None:
    """Write a dataset part unless it already holds exactly these pairs (a resumed or retried shard)."""
    if part.is_file() and read_records(part, Pair) == kept:
        return
    write_records(part, kept, Pair)


def _counter_digest(counts: Counter[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(counts.items())).encode()).hexdigest()[:16]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), drawn lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _count(items: Iterable[object]) -> str:
    return str(len(items)) if isinstance(items, Sized) else "streamed"


def make_executor(config: PipelineConfig, work_dir: Path, console: Console, show_progress: bool,
                  backends: BackendPool) -> LocalExecutor:
    """The executor the run config names (Ray is imported only when asked for)."""
    run = config.run
    if run.executor == "ray":
        from fineinstructions.executors.ray import RayExecutor

        return RayExecutor(work_dir, run.batch_size, console, show_progress, backends, workers=run.workers,
                           cpus_per_worker=run.cpus_per_worker, gpus_per_worker=run.gpus_per_worker,
                           address=run.ray_address, retry_engine_failures=run.retry_engine_failures)
    return LocalExecutor(work_dir, run.batch_size, console, show_progress, backends, run.retry_engine_failures)


def configure_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())
