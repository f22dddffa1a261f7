"""The whole FineInstructions pipeline, from queries and documents to the filtered dataset.

    queries --query_filter--> --templatize--> --template_dedup--> templates --index--> FAISS index
    documents --match(index)--> matches --instantiate--> pairs --judge--> judged --filter--> dataset

Queries are processed in shards; documents are processed in shards that flow through match,
instantiate, judge and filter together, so a document's pairs always meet in one filter batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.backends.factory import BackendPool
from fineinstructions.config import PipelineConfig, SourceConfig
from fineinstructions.executors.local import LocalExecutor, chunked
from fineinstructions.io.atomic import write_json_atomic, write_text_atomic
from fineinstructions.io.readers import ReadStats, read_rows, rows_to_records, rows_to_templates
from fineinstructions.io.sources import (
    demo_documents,
    demo_queries,
    sample,
    sharegpt_queries,
    topical_demo_sample,
)
from fineinstructions.io.writers import read_records, write_records
from fineinstructions.records import Document, Match, Pair, Query, Template
from fineinstructions.stages.filter import FilterStage
from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex, build_index
from fineinstructions.stages.instantiate import InstantiateStage
from fineinstructions.stages.judge import JudgeStage
from fineinstructions.stages.match import MatchStage
from fineinstructions.stages.pair_dedup import PairDeduplicator
from fineinstructions.stages.query_filter import QueryFilterStage, load_eval_texts
from fineinstructions.stages.template_dedup import TemplateDedupStage
from fineinstructions.stages.templatize import TemplatizeStage
from fineinstructions.summary import build_summary
from fineinstructions.text.decontaminate import Decontaminator

log = logging.getLogger(__name__)


class ConfigChanged(RuntimeError):
    """The run folder holds a run made with another configuration."""


def load_queries(source: SourceConfig, stats: ReadStats) -> list[Query]:
    if source.kind == "sharegpt":
        if source.information_seeking:
            return demo_queries(source.limit or 10**9, source.seed)
        return sample(list(sharegpt_queries()), source.limit, source.seed)
    if source.kind == "wikipedia":
        raise ValueError("the wikipedia source holds documents, not queries")
    rows = read_rows(source.path or "", source.split, stats, source.hf_config)
    return list(rows_to_records(rows, Query, source.text_field, source.id_field, None,
                                source=_source_name(source), stats=stats, limit=source.limit))  # type: ignore[arg-type]


def load_documents(source: SourceConfig, stats: ReadStats) -> list[Document]:
    if source.kind == "wikipedia":
        return demo_documents(source.limit or 10**9, source.seed)
    if source.kind == "sharegpt":
        raise ValueError("the sharegpt source holds queries, not documents")
    rows = read_rows(source.path or "", source.split, stats, source.hf_config)
    return list(rows_to_records(rows, Document, source.text_field, source.id_field, source.title_field,
                                source=_source_name(source), stats=stats, limit=source.limit))  # type: ignore[arg-type]


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
        self.backends = BackendPool()

    def _claim_folder(self) -> None:
        marker = self.root / "fingerprint"
        if marker.is_file() and marker.read_text().strip() != self.fingerprint:
            if not self.force:
                raise ConfigChanged(
                    f"{self.root} holds a run with config fingerprint {marker.read_text().strip()}, "
                    f"this config is {self.fingerprint}: use another output folder, or --force to start over")
            shutil.rmtree(self.work, ignore_errors=True)
            shutil.rmtree(self.dataset_dir, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / "config.yaml", self.config.to_yaml())
        write_text_atomic(marker, self.fingerprint + "\n")

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage; return the summary, also written to summary.json."""
        started = time.perf_counter()
        self._claim_folder()
        cfg = self.config
        read_stats = {"queries": ReadStats(), "documents": ReadStats(), "templates": ReadStats()}
        if cfg.templates is not None:
            queries: list[Query] = []
            documents = load_documents(cfg.documents, read_stats["documents"])
        elif cfg.documents.kind == "wikipedia" and cfg.documents.near_queries and cfg.queries.kind == "sharegpt":
            queries, documents = topical_demo_sample(cfg.queries.limit or 24, cfg.documents.limit or 12,
                                                     self.embedder, cfg.queries.seed)
        else:
            queries = load_queries(cfg.queries, read_stats["queries"])
            documents = load_documents(cfg.documents, read_stats["documents"])
        self.console.log(f"{len(queries)} queries and {len(documents)} documents -> {self.root}")
        try:
            with LocalExecutor(self.work, cfg.run.batch_size, self.console, self.show_progress) as ex:
                if cfg.templates is not None:
                    templates = self._bank(read_stats)
                else:
                    templates = self._templatize(ex, self._filter_queries(ex, queries))
                templates = self._dedup_templates(ex, templates)
                index = self._index(templates)
                self._documents(ex, index, documents)
                stage_stats = ex.stats
        finally:
            self.backends.close()
        dataset = read_records(self.dataset_dir, Pair) if self.dataset_dir.exists() else []
        summary = build_summary(
            config=cfg, fingerprint=self.fingerprint, stage_stats=stage_stats, dataset=dataset,  # type: ignore[arg-type]
            dataset_dir=self.dataset_dir, read_stats=read_stats, index=index,
            elapsed_s=time.perf_counter() - started, inputs={"queries": len(queries), "documents": len(documents)},
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
        tc = cfg.templatize
        shards = chunked(queries, cfg.run.shard_size)
        ex.expect("templatize", len(queries))
        templates: list[Template] = []
        for shard, records in enumerate(shards):
            templates += ex.run("templatize", lambda: TemplatizeStage(
                self.backends.get(cfg.generator), tc.prompt_version, tc.max_tokens, tc.temperature, cfg.run.seed,
                tc.retries, tc.retry_temperature, tc.min_intent_overlap), shard, records, Template)  # type: ignore[misc]
        return templates

    def _bank(self, read_stats: dict[str, ReadStats]) -> list[Template]:
        """A ready template bank (ours or the released FineTemplates) instead of templatizing queries."""
        source = self.config.templates
        assert source is not None
        rows = read_rows(source.path or "", source.split, read_stats["templates"], source.hf_config)
        return list(rows_to_templates(rows, read_stats["templates"], source.limit))

    def _dedup_templates(self, ex: LocalExecutor, templates: list[Template]) -> list[Template]:
        threshold = self.config.templatize.near_duplicate_threshold
        ex.expect("template_dedup", len(templates))
        return ex.run("template_dedup", lambda: TemplateDedupStage(threshold), 0, templates, Template,  # type: ignore[return-value]
                      whole_shard=True)

    def _index(self, templates: list[Template]) -> TemplateIndex | ShardedTemplateIndex:
        mc = self.config.match
        index_dir = self.root / "index"
        embedder = self.embedder
        key = "|".join([mc.index, str(mc.index_shards), str(mc.train_size),
                        ",".join(sorted({t.template_id for t in templates}))])
        stamp = self.root / "index.sha"
        want = hashlib.sha256(key.encode()).hexdigest()
        if stamp.is_file() and stamp.read_text().strip() == want and index_dir.is_dir():
            return TemplateIndex.load(index_dir, embedder, nprobe=mc.nprobe, ef_search=mc.ef_search,
                                      refine_k_factor=mc.refine_k_factor)
        self.console.log(f"indexing {len(templates)} templates with {embedder.model_id} ({mc.index})")
        built = build_index(templates, embedder, mc.index, mc.index_shards, mc.train_size)
        built.configure(mc.nprobe, mc.ef_search, mc.refine_k_factor)
        built.save(index_dir)
        write_text_atomic(stamp, want + "\n")
        return built

    @property
    def embedder(self) -> Embedder:
        if not hasattr(self, "_embedder"):
            self._embedder = Embedder(self.config.match.embedder)
        return self._embedder

    def _documents(self, ex: LocalExecutor, index: TemplateIndex | ShardedTemplateIndex,
                   documents: list[Document]) -> None:
        cfg = self.config
        judge_backend = cfg.judge_backend or cfg.generator
        shards = chunked(documents, cfg.run.shard_size)
        ex.expect("match", len(documents))
        mc = cfg.match
        uses: Counter[str] = Counter()  # template uses in earlier shards: the corpus-wide cap resumes exactly
        deduplicator = PairDeduplicator(cfg.filter.near_duplicate_threshold)  # pairs kept in earlier shards
        for shard, records in enumerate(shards):
            matches = ex.run("match", lambda: MatchStage(
                index, self.embedder, mc.top_k, mc.coverage_chunks, mc.sigma, mc.alpha, mc.min_score,
                mc.per_vector_k, mc.mmr_lambda, mc.max_template_uses, mc.popularity_weight, mc.max_windows,
                mc.min_document_words, mc.max_document_chars, prior_uses=uses), shard, records, Match)  # type: ignore[misc]
            uses.update(m.template_id for m in matches)  # type: ignore[attr-defined]
            ex.expect("instantiate", len(matches))
            pairs = ex.run("instantiate", lambda: InstantiateStage(
                self.backends.get(cfg.generator), cfg.instantiate.prompt_version, cfg.instantiate.max_tokens,
                cfg.instantiate.temperature, cfg.run.seed, cfg.instantiate.min_coverage, self.fingerprint,
                cfg.instantiate.min_copy_words, cfg.instantiate.min_answer_words, cfg.instantiate.max_answer_chars,
                cfg.instantiate.max_prompt_document_chars, cfg.instantiate.constrained), shard, matches, Pair)
            ex.expect("judge", len(pairs))
            judged = ex.run("judge", lambda: JudgeStage(
                self.backends.get(judge_backend), cfg.judge.prompt_version, cfg.judge.max_tokens,
                cfg.judge.temperature, cfg.run.seed), shard, pairs, Pair)
            ex.expect("filter", len(judged))
            # A document's pairs must meet in one filter batch, so the filter sees the whole shard.
            kept = ex.run("filter", lambda: FilterStage(
                cfg.judge.min_score, cfg.instantiate.min_coverage, cfg.filter.token_budget,
                cfg.filter.max_pairs_per_document, deduplicator), shard, judged, Pair, whole_shard=True)
            deduplicator.remember(kept)  # type: ignore[arg-type]  # idempotent; rebuilds the state on resume
            part = self.dataset_dir / f"part-{shard:05d}.parquet"
            if not part.is_file():
                write_records(part, kept, Pair)


def configure_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())
