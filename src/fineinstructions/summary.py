"""The run summary: the funnel with drop reasons, throughput per stage, and quality figures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from rich.console import Console
from rich.table import Table

from fineinstructions.records import Pair
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.registry import RECIPE_STAGES, STAGE_ORDER

SUMMARY_ORDER = (*STAGE_ORDER, *RECIPE_STAGES, "dedup")  # the pipeline's stages, then pair dedup across ranks

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.io.readers import ReadStats
    from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


# The pair columns the summary reads: never the document text, so a streaming pass costs little.
TALLY_COLUMNS = ("document_id", "template_id", "instantiated_instruction", "answer", "excerpt_coverage",
                 "synthetic_token_count", "token_count")
EXACT_DISTINCT_LIMIT = 100_000  # distinct instructions counted exactly up to here, estimated beyond


class DatasetTally:
    """The dataset's quality counts, from one streaming pass over its Parquet parts in bounded memory.

    Memory holds one Arrow batch, a count per template (bounded by the bank, not the corpus), and the hashes of
    distinct instructions up to EXACT_DISTINCT_LIMIT, beyond which a HyperLogLog sketch estimates their
    number (about 1 % error). A document's pairs are adjacent in the dataset (shards are cut by document), so
    documents are counted by runs of equal ids."""

    def __init__(self) -> None:
        self.pairs = 0
        self.documents = 0
        self.coverage_sum = 0.0
        self.coverage_high = 0
        self.unresolved = 0
        self.synthetic_tokens = 0
        self.document_tokens = 0
        self.templates: Counter[str] = Counter()
        self._instructions: set[int] | None = set()
        self._sketch: Any = None
        self._last_document: str | None = None

    @classmethod
    def from_files(cls, files: Iterable[Path]) -> DatasetTally:
        tally = cls()
        for file in files:
            parquet = pq.ParquetFile(file)
            columns = [c for c in TALLY_COLUMNS if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=65_536, columns=columns):
                tally.add(batch)
        return tally

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair]) -> DatasetTally:
        tally = cls()
        if pairs:
            tally.add(pa.RecordBatch.from_pylist([{c: getattr(p, c) for c in TALLY_COLUMNS} for p in pairs]))
        return tally

    def add(self, batch: pa.RecordBatch) -> None:
        self.pairs += batch.num_rows
        coverage = batch.column("excerpt_coverage")
        self.coverage_sum += float(pc.sum(coverage).as_py() or 0.0)
        self.coverage_high += int(pc.sum(pc.greater_equal(coverage, 0.8)).as_py() or 0)
        answers = batch.column("answer")
        self.unresolved += int(pc.sum(pc.or_(pc.match_substring(answers, "<excerpt>"),
                                             pc.match_substring(answers, "</excerpt>"))).as_py() or 0)
        self.synthetic_tokens += int(pc.sum(batch.column("synthetic_token_count")).as_py() or 0)
        self.templates.update(batch.column("template_id").to_pylist())
        for document, tokens in zip(batch.column("document_id").to_pylist(),
                                    batch.column("token_count").to_pylist(), strict=True):
            if document != self._last_document:
                self.documents += 1
                self.document_tokens += tokens
                self._last_document = document
        self._count_instructions(pc.utf8_lower(batch.column("instantiated_instruction")).to_pylist())

    def _count_instructions(self, instructions: list[str]) -> None:
        if self._instructions is not None:
            self._instructions.update(xxhash.xxh64_intdigest(i.encode()) for i in instructions)
            if len(self._instructions) <= EXACT_DISTINCT_LIMIT:
                return
            from datasketch import HyperLogLogPlusPlus

            self._sketch = HyperLogLogPlusPlus(p=14)
            for value in self._instructions:
                self._sketch.update(value.to_bytes(8, "little"))
            self._instructions = None
            return
        for instruction in instructions:
            self._sketch.update(instruction.encode())

    @property
    def distinct_instructions(self) -> int:
        return len(self._instructions) if self._instructions is not None else int(self._sketch.count())


class RecipeTally:
    """A baseline recipe's dataset counts (texts, documents, tokens, QA items), streamed from its parts."""

    COLUMNS = ("document_id", "token_count", "source_token_count", "items")

    def __init__(self) -> None:
        self.texts = self.documents = self.synthetic_tokens = self.source_tokens = self.items = 0
        self._last_document: str | None = None

    @classmethod
    def from_files(cls, files: Iterable[Path]) -> RecipeTally:
        tally = cls()
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=65_536, columns=list(cls.COLUMNS)):
                tally.texts += batch.num_rows
                tally.synthetic_tokens += int(pc.sum(batch.column("token_count")).as_py() or 0)
                tally.source_tokens += int(pc.sum(batch.column("source_token_count")).as_py() or 0)
                tally.items += int(pc.sum(batch.column("items")).as_py() or 0)
                for document in batch.column("document_id").to_pylist():  # a document's texts are adjacent
                    if document != tally._last_document:
                        tally.documents += 1
                        tally._last_document = document
        return tally


def recipe_quality(stage_stats: dict[str, StageStats], tally: RecipeTally, recipe: str) -> dict[str, Any]:
    """What a baseline recipe made: texts per document, tokens against the source's, seconds per text."""
    stage = stage_stats.get(recipe, StageStats())
    return {
        "texts": tally.texts,
        "documents_with_texts": tally.documents,
        "texts_per_document": _ratio(tally.texts, tally.documents),
        "chunks": int(stage.metrics.get("chunks", 0)),
        "kept_chunk_rate": _ratio(stage.rows_out, stage.metrics.get("chunks", 0.0)) if recipe == "wrap" else None,
        "items": tally.items,
        "synthetic_tokens": tally.synthetic_tokens,
        "source_tokens": tally.source_tokens,
        "synthetic_per_source_token": _ratio(tally.synthetic_tokens, tally.source_tokens),
        "seconds_per_text": _ratio(stage.seconds, tally.texts),
    }


def quality(stage_stats: dict[str, StageStats], tally: DatasetTally) -> dict[str, Any]:
    """Valid-template rate, excerpt coverage, judge pass rate and diversity."""
    templatize = stage_stats.get("templatize", StageStats())
    instantiate = stage_stats.get("instantiate", StageStats())
    judge = stage_stats.get("judge", StageStats())
    match = stage_stats.get("match", StageStats())
    removed = Counter[str]()
    for name in ("filter", "dedup"):
        removed.update(stage_stats.get(name, StageStats()).dropped)
    histogram = {str(s): int(judge.metrics.get(f"score_{s}", 0)) for s in (1, 2, 3, 4, 5)}
    histogram["unparsed"] = int(judge.metrics.get("score_none", 0))
    generated_chars = instantiate.metrics.get("answer_chars", 0.0)
    generated_tokens = instantiate.metrics.get("answer_completion_tokens", 0.0)
    pairs = tally.pairs
    return {
        "valid_template_rate": _ratio(templatize.rows_out, templatize.rows_in),
        "mean_match_score": _ratio(match.metrics.get("match_score_sum", 0.0), match.rows_out),
        "matches_from_document_parts": _ratio(match.metrics.get("matches_from_parts", 0.0), match.rows_out),
        "instantiated_rate": _ratio(instantiate.rows_out, instantiate.rows_in),
        "mean_excerpt_coverage_instantiated": _ratio(instantiate.metrics.get("coverage_sum", 0.0),
                                                     instantiate.rows_out),
        "mean_excerpt_coverage_kept": _ratio(tally.coverage_sum, pairs),
        "kept_with_coverage_at_least_0_8": _ratio(tally.coverage_high, pairs),
        "kept_with_unresolved_markers": tally.unresolved,
        "duplicate_pairs_removed": int(removed["duplicate_pair"] + removed["near_duplicate_pair"]),
        "answer_chars_per_generated_token": _ratio(generated_chars, generated_tokens),
        "judge_score_histogram": histogram,
        "judge_pass_rate": _ratio(sum(v for k, v in histogram.items() if k in ("4", "5")), judge.rows_out),
        "pairs": pairs,
        "documents_with_pairs": tally.documents,
        "pairs_per_document": _ratio(pairs, tally.documents),
        "distinct_templates": len(tally.templates),
        "max_template_share": _ratio(max(tally.templates.values(), default=0), pairs),
        "distinct_instruction_rate": _ratio(tally.distinct_instructions, pairs),
        "synthetic_tokens": tally.synthetic_tokens,
        "document_tokens": tally.document_tokens,
    }


def build_summary(config: PipelineConfig, fingerprint: str, stage_stats: dict[str, StageStats],
                  dataset: DatasetTally | RecipeTally,
                  dataset_dir: Path, read_stats: dict[str, ReadStats],
                  index: TemplateIndex | ShardedTemplateIndex | None,
                  elapsed_s: float, inputs: dict[str, int]) -> dict[str, Any]:
    stages = {name: stage_stats[name].to_dict() for name in SUMMARY_ORDER if name in stage_stats}
    if isinstance(dataset, RecipeTally):
        recipe: Any = config.recipe
        return {
            "dataset": str(dataset_dir), "config_fingerprint": fingerprint, "recipe": recipe,
            "models": {"generator": config.generator.model, recipe: config.backend_for(recipe).model},
            "inputs": inputs, "index": None, "stages": stages,
            "unresolved_engine_failures": sum(stage_stats[name].engine_failures for name in stages),
            "quality": recipe_quality(stage_stats, dataset, config.recipe), "elapsed_s": round(elapsed_s, 1),
        }
    return {
        "dataset": str(dataset_dir),
        "config_fingerprint": fingerprint,
        "models": {
            "generator": config.generator.model,
            "templatize": config.backend_for("templatize").model if config.templates is None else None,
            "instantiate": config.backend_for("instantiate").model,
            "judge": config.backend_for("judge").model,
            "embedder": config.match.embedder,
        },
        "inputs": inputs | {
            f"{name}_read_skips": dict(stats.skipped) for name, stats in read_stats.items() if stats.skipped
        } | {
            f"{name}_ignored_files": dict(stats.ignored_files) for name, stats in read_stats.items()
            if stats.ignored_files
        },
        "index": {"templates": index.ntotal, "duplicates_removed": index.duplicates_removed, "kind": index.spec}
        if index is not None else None,
        "stages": stages,
        # Requests that failed through the engine's fault (an outage) and still lack an answer: a rerun
        # retries them (and only them); the CLI exits non-zero while any remain.
        "unresolved_engine_failures": sum(stage_stats[name].engine_failures for name in stages),
        "quality": quality(stage_stats, dataset),
        "elapsed_s": round(elapsed_s, 1),
    }


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Render the summary as tables."""
    console = console or Console()
    funnel = Table(title="FineInstructions run: funnel and throughput", title_justify="left")
    for column in ("stage", "in", "out", "dropped (reason: count)", "seconds", "gen tok/s"):
        funnel.add_column(column, justify="right" if column not in ("stage", "dropped (reason: count)") else "left")
    index = summary.get("index") or {}
    for name, s in summary["stages"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "-"
        funnel.add_row(name, str(s["rows_in"]), str(s["rows_out"]), dropped, f"{s['seconds']:.1f}",
                       f"{s['completion_tokens_per_s']:.1f}" if s["completion_tokens"] else "-")
        if name == "template_dedup" and index:
            funnel.add_row("index", str(s["rows_out"]), str(index["templates"]),
                           f"duplicate_template: {index['duplicates_removed']}" if index["duplicates_removed"]
                           else "-", "", "")
    console.print(funnel)
    engine = {name: s["backend"] for name, s in summary["stages"].items() if s.get("backend")}
    if engine:
        faults = Table(title="Engine: cache, retries, faults", title_justify="left", show_header=False)
        faults.add_column("stage")
        faults.add_column("counts")
        for name, counts in engine.items():
            faults.add_row(name, ", ".join(f"{k}: {v:g}" for k, v in sorted(counts.items())))
        console.print(faults)
    q = summary["quality"]
    if summary.get("recipe"):
        return _print_recipe_quality(summary, console)
    table = Table(title="Quality", title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    rows = [
        ("valid-template rate", pct(q["valid_template_rate"])),
        ("mean match similarity", "-" if q.get("mean_match_score") is None else f"{q['mean_match_score']:.3f}"),
        ("matches found by a document part (not the whole)", pct(q.get("matches_from_document_parts"))),
        ("instantiated (not null, gates passed)", pct(q["instantiated_rate"])),
        ("mean excerpt coverage, instantiated", pct(q["mean_excerpt_coverage_instantiated"])),
        ("mean excerpt coverage, kept", pct(q["mean_excerpt_coverage_kept"])),
        ("kept answers with coverage >= 0.8", pct(q.get("kept_with_coverage_at_least_0_8"))),
        ("kept answers with unresolved markers", str(q.get("kept_with_unresolved_markers", "-"))),
        ("duplicate pairs removed", str(q.get("duplicate_pairs_removed", "-"))),
        ("answer chars per generated token", "-" if q["answer_chars_per_generated_token"] is None
         else f"{q['answer_chars_per_generated_token']:.2f}"),
        ("judge pass rate (score >= 4)", pct(q["judge_pass_rate"])),
        ("judge scores 1/2/3/4/5 (unparsed)", " / ".join(str(q["judge_score_histogram"][k]) for k in "12345")
         + f" ({q['judge_score_histogram']['unparsed']})"),
        ("pairs kept", str(q["pairs"])),
        ("documents with pairs", str(q["documents_with_pairs"])),
        ("distinct templates used", str(q["distinct_templates"])),
        ("largest share of one template", pct(q["max_template_share"])),
        ("synthetic / document tokens", f"{q['synthetic_tokens']} / {q['document_tokens']}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"dataset: [bold]{summary['dataset']}[/bold]   summary: "
                  f"[bold]{Path(summary['dataset']).parent / 'summary.json'}[/bold]   "
                  f"elapsed: {summary['elapsed_s']} s   config: {summary['config_fingerprint']}")


def _print_recipe_quality(summary: dict[str, Any], console: Console) -> None:
    q = summary["quality"]
    table = Table(title=f"Recipe {summary['recipe']}: what it made", title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("texts", str(q["texts"])), ("documents with texts", str(q["documents_with_texts"])),
            ("chunks sent to the model", str(q["chunks"])),
            ("question/answer items", str(q["items"])),
            ("synthetic / source tokens", f"{q['synthetic_tokens']} / {q['source_tokens']}"),
            ("seconds per text (generation)", "-" if q["seconds_per_text"] is None else f"{q['seconds_per_text']:.2f}")]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"dataset: [bold]{summary['dataset']}[/bold]   elapsed: {summary['elapsed_s']} s   "
                  f"config: {summary['config_fingerprint']}")
