"""The run summary: the funnel with drop reasons, throughput per stage, and quality figures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from fineinstructions.records import Pair
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.registry import STAGE_ORDER

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.io.readers import ReadStats
    from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def quality(stage_stats: dict[str, StageStats], dataset: list[Pair]) -> dict[str, Any]:
    """Valid-template rate, excerpt coverage, judge pass rate and diversity."""
    templatize = stage_stats.get("templatize", StageStats())
    instantiate = stage_stats.get("instantiate", StageStats())
    judge = stage_stats.get("judge", StageStats())
    match = stage_stats.get("match", StageStats())
    filter_ = stage_stats.get("filter", StageStats())
    histogram = {str(s): int(judge.metrics.get(f"score_{s}", 0)) for s in (1, 2, 3, 4, 5)}
    histogram["unparsed"] = int(judge.metrics.get("score_none", 0))
    template_uses = Counter(p.template_id for p in dataset)
    per_document = Counter(p.document_id for p in dataset)
    generated_chars = instantiate.metrics.get("answer_chars", 0.0)
    generated_tokens = instantiate.metrics.get("answer_completion_tokens", 0.0)
    return {
        "valid_template_rate": _ratio(templatize.rows_out, templatize.rows_in),
        "mean_match_score": _ratio(match.metrics.get("match_score_sum", 0.0), match.rows_out),
        "matches_from_document_parts": _ratio(match.metrics.get("matches_from_parts", 0.0), match.rows_out),
        "instantiated_rate": _ratio(instantiate.rows_out, instantiate.rows_in),
        "mean_excerpt_coverage_instantiated": _ratio(instantiate.metrics.get("coverage_sum", 0.0),
                                                     instantiate.rows_out),
        "mean_excerpt_coverage_kept": _ratio(sum(p.excerpt_coverage for p in dataset), len(dataset)),
        "kept_with_coverage_at_least_0_8": _ratio(sum(p.excerpt_coverage >= 0.8 for p in dataset), len(dataset)),
        "kept_with_unresolved_markers": sum("<excerpt>" in p.answer or "</excerpt>" in p.answer for p in dataset),
        "duplicate_pairs_removed": int(filter_.dropped.get("duplicate_pair", 0)
                                       + filter_.dropped.get("near_duplicate_pair", 0)),
        "answer_chars_per_generated_token": _ratio(generated_chars, generated_tokens),
        "judge_score_histogram": histogram,
        "judge_pass_rate": _ratio(sum(v for k, v in histogram.items() if k in ("4", "5")), judge.rows_out),
        "pairs": len(dataset),
        "documents_with_pairs": len(per_document),
        "pairs_per_document": _ratio(len(dataset), len(per_document)),
        "distinct_templates": len(template_uses),
        "max_template_share": _ratio(max(template_uses.values(), default=0), len(dataset)),
        "distinct_instruction_rate": _ratio(len({p.instantiated_instruction.lower() for p in dataset}), len(dataset)),
        "synthetic_tokens": sum(p.synthetic_token_count for p in dataset),
        "document_tokens": sum(tokens for tokens in {p.document_id: p.token_count for p in dataset}.values()),
    }


def build_summary(config: PipelineConfig, fingerprint: str, stage_stats: dict[str, StageStats], dataset: list[Pair],
                  dataset_dir: Path, read_stats: dict[str, ReadStats],
                  index: TemplateIndex | ShardedTemplateIndex | None,
                  elapsed_s: float, inputs: dict[str, int]) -> dict[str, Any]:
    stages = {name: stage_stats[name].to_dict() for name in STAGE_ORDER if name in stage_stats}
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
