"""Labelled instantiation check on real data: does the instantiate stage fill a template that fits its document,
and refuse (or drop) one that does not?

    .venv/bin/python benchmarks/instantiation_check.py --cache /tmp/retrieval_cache --seed 0 --engine vllm

(the three default models, one engine alive at a time; on llama.cpp add `--engine llamacpp --threads 1`; a quick
trial: `--models smollm2-135m-instruct --engine llamacpp --limit 4 --threads 1`). Recorded run (2026-12-02, 2 cores,
vLLM on the CPU, README "Quality checks of the method"): FIT kept / NOT-FIT null-or-dropped 1.5B 0.654 / 0.872
(0.410 / 0.910 before `unfilled_variable` read the values the model named), 0.5B 0.128 / 0.923, 135M 0.000 / 0.987.

Goals (the project's issue): of candidates known to fit, >= 70 % instantiated and kept by the stage's gates; of
candidates known not to fit, >= 80 % answered `null` or dropped. Both are reported per model (default: the
1.5B and 0.5B Qwen coders and SmolLM2-135M) as a confusion table.

Data: the labelled pairs of the retrieval check (benchmarks/retrieval_check.py): real FAQ entries of Celery,
Scrapy and Django (benchmarks/faq_source.py). Each entry's answer section is a document; its gold template is the
template the templatize stage made of the entry's question (`--templatize-model`, default the 0.5B coder, the
retrieval check's settings). The gold templates are read from the retrieval check's results
(`CACHE/results.json`) when they were made by the same model, else the questions are templatized with the
retrieval check's own function, behind the same request cache (`CACHE/requests.sqlite`; its keys name the model,
not the engine, so the recorded 0.5B answers are hits whatever `--engine` is). Questions whose template failed
the templatize gates are left out, as in the retrieval check.

Candidates, per document with a valid gold template (each a Match record, as the match stage hands them on):
  FIT      the document with its own gold template (rank 1);
  NOT-FIT  the document with the gold template of another document (rank 2), drawn with a seeded RNG
           (`--seed`) from the documents of another project, preferring templates not yet drawn, so each
           template is some other document's NOT-FIT at most once while there are enough; only when no other
           project has a template is one of the same project taken (flagged `cross_project: false`). A template
           from another project's FAQ is known not to fit only as far as it is specific: a generic template
           ("How do I <fi>do something</fi>?") may fit any answer, so a NOT-FIT kept is worth reading
           (`--show` prints some).
`--limit N` keeps the first N documents with a valid gold template, taken in turn from each project (so NOT-FIT
templates still come from other projects in a small trial); without recorded templates only the first 2N FAQ
pairs (in the same order) are templatized for it.

Each model runs the candidates through the real instantiate stage, built with `from_config` over
`stage_config({"instantiate": {"backend": {kind: --engine, model, n_threads: --threads}}})` (every other setting
at its default: prompt v2, 400 tokens, greedy, the gates) and a StageContext whose BackendPool caches every request
in `CACHE/instantiate-<engine>.sqlite` (one file per engine: the cache key names the model, not the engine, and
a vLLM run must not be served llama.cpp's answers), so a rerun costs no model call.

Report per model: rows FIT / NOT-FIT; columns: kept (instantiated and passed every gate), null (the model said the
template does not fit), then each drop reason of the stage (counted by its name, before any `:`); the two
headline rates against their goals (candidates whose request failed in the engine, `backend_error`, are left out
of both rates and warned about); generated tokens and generation seconds of the candidates' answers (as recorded
when they were generated: a cached answer keeps its original figures) and what this run itself cost the engine.
`--out` (default CACHE/instantiation_results.json) keeps every candidate: document, kind, template, outcome,
reason, the raw output and, when kept, the instruction and the expanded answer.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS.parent) not in sys.path:  # run as a script: `benchmarks` importable as a package
    sys.path.insert(0, str(BENCHMARKS.parent))

DEFAULT_MODELS = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
FIT_GOAL = 0.70  # share of FIT candidates kept
NOT_FIT_GOAL = 0.80  # share of NOT-FIT candidates answered null or dropped
FIT, NOT_FIT = "FIT", "NOT-FIT"
KEPT, NULL = "kept", "null"
ENGINE_ERROR = "backend_error"


# -- candidates (pure functions) ---------------------------------------------------------------------------------


def interleave(items: Sequence[Any], group: Any) -> list[Any]:
    """Items taken in turn from each group (groups in order of first appearance, items in their order)."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    out: list[Any] = []
    queues = list(groups.values())
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def choose_not_fit(documents: Sequence[str], project: Mapping[str, str], template_of: Mapping[str, str],
                   seed: int) -> dict[str, tuple[str, bool]]:
    """Per document, (the document whose gold template is its NOT-FIT candidate, whether that one is from another
    project). Drawn with a seeded RNG among documents of other projects whose template differs from the document's
    own, preferring templates not drawn yet; the same project only when no other project has one; a document left
    with no template different from its own gets none."""
    rng = random.Random(seed)
    used: set[str] = set()
    chosen: dict[str, tuple[str, bool]] = {}
    for doc in documents:
        other = [d for d in documents if d != doc and template_of[d] != template_of[doc]]
        cross = [d for d in other if project[d] != project[doc]]
        pool = cross or other
        if not pool:
            continue
        fresh = [d for d in pool if template_of[d] not in used]
        pick = rng.choice(fresh or pool)
        used.add(template_of[pick])
        chosen[doc] = (pick, bool(cross))
    return chosen


def outcome_of(reason: str | None) -> str:
    """A candidate's column: kept (no reason), null, or the drop reason's name (before any `:`)."""
    return KEPT if reason is None else reason.split(":")[0]


@dataclass
class Rates:
    fit: int
    fit_kept: int
    not_fit: int
    not_fit_refused: int  # null or dropped
    not_fit_null: int
    engine_errors: int

    @property
    def fit_kept_rate(self) -> float:
        return self.fit_kept / self.fit if self.fit else 0.0

    @property
    def not_fit_refused_rate(self) -> float:
        return self.not_fit_refused / self.not_fit if self.not_fit else 0.0


def confusion(outcomes: Sequence[tuple[str, str]]) -> dict[str, Counter[str]]:
    """(kind, outcome) per candidate -> per kind, the count of each outcome."""
    table: dict[str, Counter[str]] = {FIT: Counter(), NOT_FIT: Counter()}
    for kind, outcome in outcomes:
        table[kind][outcome] += 1
    return table


def rates(table: Mapping[str, Counter[str]]) -> Rates:
    """The two headline rates of a confusion table; candidates that failed in the engine count in neither."""
    fit, not_fit = table.get(FIT, Counter()), table.get(NOT_FIT, Counter())
    fit_n = sum(fit.values()) - fit[ENGINE_ERROR]
    not_fit_n = sum(not_fit.values()) - not_fit[ENGINE_ERROR]
    return Rates(fit=fit_n, fit_kept=fit[KEPT], not_fit=not_fit_n, not_fit_refused=not_fit_n - not_fit[KEPT],
                 not_fit_null=not_fit[NULL], engine_errors=fit[ENGINE_ERROR] + not_fit[ENGINE_ERROR])


def columns(tables: Sequence[Mapping[str, Counter[str]]]) -> list[str]:
    """Table columns: kept, null, then every other outcome by total count (then name)."""
    total: Counter[str] = Counter()
    for table in tables:
        for counts in table.values():
            total.update(counts)
    rest = sorted((c for c in total if c not in (KEPT, NULL)), key=lambda c: (-total[c], c))
    return [KEPT, NULL, *rest]


def markdown_table(table: Mapping[str, Counter[str]], cols: Sequence[str]) -> str:
    lines = ["| candidates | n | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for kind in (FIT, NOT_FIT):
        counts = table.get(kind, Counter())
        lines.append(f"| {kind} | {sum(counts.values())} | " + " | ".join(str(counts[c]) for c in cols) + " |")
    return "\n".join(lines)


# -- data ----------------------------------------------------------------------------------------------------------


@dataclass
class Labelled:
    """One FAQ entry with a valid gold template."""

    document_id: str
    project: str
    question: str
    answer: str
    template: Any  # records.Template


def recorded_templates(path: Path, model: str, pairs: Sequence[Any]) -> tuple[dict[str, Any], set[str]] | None:
    """(valid gold templates by pair id, pair ids whose question failed the templatize gates) from the retrieval
    check's results, when they were made by `model` and cover every pair (same question text); else None."""
    from fineinstructions.records import Template

    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("args", {}).get("model") != model:
        return None
    valid = {t["query_id"]: Template.model_validate(t) for t in data.get("gold_templates", [])}
    invalid = {row["query_id"]: row.get("text", "") for row in data.get("invalid", [])}
    for p in pairs:
        if p.pair_id in valid and valid[p.pair_id].query == p.question:
            continue
        if p.pair_id in invalid and invalid[p.pair_id] == p.question:
            continue
        return None
    wanted = {p.pair_id for p in pairs}
    return {k: v for k, v in valid.items() if k in wanted}, {k for k in invalid if k in wanted}


def gold_templates(pairs: Sequence[Any], args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Valid gold templates by pair id, and where they came from."""
    from benchmarks.retrieval_check import templatize

    results = args.cache / "results.json"
    recorded = recorded_templates(results, args.templatize_model, pairs)
    if recorded is not None:
        return recorded[0], f"read from {results} ({len(recorded[1])} invalid left out)"
    if args.limit:  # about 3 in 4 questions get a valid template: twice the limit is enough to pick from
        pairs = pairs[: 2 * args.limit]
    engine = args.templatize_engine or args.engine
    namespace = argparse.Namespace(model=args.templatize_model, engine=engine, threads=args.threads, cache=args.cache)
    t0 = time.perf_counter()
    templates, rejected = templatize(pairs, namespace)
    return ({t.query_id: t for t in templates},
            f"templatized ({args.templatize_model} on {engine}, cache {args.cache / 'requests.sqlite'}) in "
            f"{time.perf_counter() - t0:.0f} s ({len(rejected)} invalid left out)")


@dataclass
class Candidate:
    document_id: str
    project: str
    kind: str
    template_id: str
    template: str
    template_from: str  # the document whose question the template was made of
    cross_project: bool = True


def candidates(labelled: Sequence[Labelled], seed: int) -> list[Candidate]:
    """FIT and NOT-FIT candidates of every labelled document (see the module docstring)."""
    by_id = {d.document_id: d for d in labelled}
    order = [d.document_id for d in labelled]
    not_fit = choose_not_fit(order, {d.document_id: d.project for d in labelled},
                             {d.document_id: d.template.template_id for d in labelled}, seed)
    out: list[Candidate] = []
    for d in labelled:
        out.append(Candidate(d.document_id, d.project, FIT, d.template.template_id, d.template.template,
                             d.document_id))
        if d.document_id in not_fit:
            source, cross = not_fit[d.document_id]
            t = by_id[source].template
            out.append(Candidate(d.document_id, d.project, NOT_FIT, t.template_id, t.template, source, cross))
    return out


def to_match(candidate: Candidate, labelled: Mapping[str, Labelled]) -> Any:
    """The Match record the match stage would hand on (no retrieval here: score 0, FIT at rank 1)."""
    from fineinstructions.records import Match

    doc = labelled[candidate.document_id]
    template = labelled[candidate.template_from].template
    return Match(document_id=doc.document_id, template_id=template.template_id, score=0.0,
                 rank=1 if candidate.kind == FIT else 2, text=doc.answer, template=template.template,
                 compatible_document_description=template.compatible_document_description)


# -- one model -----------------------------------------------------------------------------------------------------


class RecordingBackend:
    """The stage's (cached) backend, keeping every generation by its conversation: cached answers included, with
    the tokens and seconds recorded when they were generated."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.model_id: str = inner.model_id
        self.seen: dict[str, Any] = {}

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def generate(self, conversations: Sequence[Any], sampling: Any) -> list[Any]:
        out = self.inner.generate(conversations, sampling)
        for conversation, generation in zip(conversations, out, strict=True):
            self.seen[json.dumps(conversation, sort_keys=True)] = generation
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return list(self.inner.count_tokens(texts))

    def close(self) -> None:
        """The pool owns the engine."""


@dataclass
class ModelRun:
    model: str
    engine: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    table: dict[str, Counter[str]] = field(default_factory=dict)
    generated_tokens: int = 0  # over the candidates' answers, as recorded
    generation_seconds: float = 0.0
    engine_start_seconds: float = 0.0
    run_seconds: float = 0.0  # this run: the stage's wall time (cached answers cost ~0)
    engine_requests: int = 0  # this run: requests that reached the engine
    engine_tokens: int = 0
    cache_hits: int = 0


def run_model(model: str, labelled: Mapping[str, Labelled], chosen: Sequence[Candidate],
              args: argparse.Namespace) -> ModelRun:
    from fineinstructions.backends.cache import RequestCache
    from fineinstructions.backends.factory import BackendPool
    from fineinstructions.config import stage_config
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.registry import StageSpec, stage_class

    backend: dict[str, Any] = {"kind": args.engine, "model": model}
    if args.threads:
        backend["n_threads"] = args.threads
    config = stage_config({"instantiate": {"backend": backend}})
    ic = config.instantiate
    context = StageContext(config, backends=BackendPool(RequestCache(args.cache / f"instantiate-{args.engine}.sqlite")))
    run = ModelRun(model, args.engine)
    try:
        t0 = time.perf_counter()
        recorder = RecordingBackend(context.backend("instantiate", ic.prompt_version))  # the engine starts here
        run.engine_start_seconds = time.perf_counter() - t0
        context.engines["instantiate"] = recorder
        stage = stage_class("instantiate").from_config(config, context)
        matches = [to_match(c, labelled) for c in chosen]
        kept: dict[tuple[str, str], Any] = {}
        dropped: dict[tuple[str, str], Any] = {}
        documents = list(dict.fromkeys(m.document_id for m in matches))
        # documents per call: as the pipeline feeds this engine (2 candidates each), unless --batch says otherwise
        batch = args.batch or max(1, StageSpec("instantiate", config, "", "").feed_size // 2)
        t0 = time.perf_counter()
        for at in range(0, len(documents), batch):  # the cache commits every call: a stopped run keeps them
            docs = set(documents[at : at + batch])
            result = stage.process([m for m in matches if m.document_id in docs])
            kept.update({(p.document_id, p.template_id): p for p in result.records})
            dropped.update({(r.row["document_id"], r.row["template_id"]): r for r in result.rejected})
            print(f"  {model}: {min(at + batch, len(documents))}/{len(documents)} documents "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        run.run_seconds = time.perf_counter() - t0
        stats = recorder.stats
        run.engine_requests, run.engine_tokens = stats.requests, stats.completion_tokens
        run.cache_hits = int(stats.extra.get("cache_hits", 0))
        outcomes: list[tuple[str, str]] = []
        for candidate, match in zip(chosen, matches, strict=True):
            key = (match.document_id, match.template_id)
            generation = recorder.seen.get(json.dumps(stage.conversation(match), sort_keys=True))
            pair, rejected = kept.get(key), dropped.get(key)
            if pair is None:
                if rejected is None:
                    raise RuntimeError(f"the stage returned nothing for {key}")
                reason: str | None = rejected.reason
            else:
                reason = None
            outcome = outcome_of(reason)
            outcomes.append((candidate.kind, outcome))
            row: dict[str, Any] = asdict(candidate) | {
                "outcome": outcome, "reason": reason,
                "output": generation.text if generation is not None else None,
                "completion_tokens": generation.completion_tokens if generation is not None else 0,
                "seconds": round(generation.seconds, 3) if generation is not None else 0.0,
                "finish_reason": generation.finish_reason if generation is not None else None}
            if pair is not None:
                row |= {"instruction": pair.instantiated_instruction, "answer": pair.answer,
                        "answer_with_markers": pair.answer_with_markers, "excerpt_coverage": pair.excerpt_coverage}
            elif rejected is not None and "excerpt_coverage" in rejected.row:
                row["excerpt_coverage"] = rejected.row["excerpt_coverage"]
            run.candidates.append(row)
            if generation is not None:
                run.generated_tokens += generation.completion_tokens
                run.generation_seconds += generation.seconds
        run.table = confusion(outcomes)
    finally:
        context.close()  # one engine alive at a time
    return run


# -- the run -------------------------------------------------------------------------------------------------------


def verdict(value: float, goal: float) -> str:
    return f"{value:.3f} (goal >= {goal:.2f}: {'met' if value >= goal else 'NOT met'})"


def main() -> None:
    from benchmarks.faq_source import load_pairs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="instantiate models (registry names or GGUF paths), run one after the other")
    parser.add_argument("--engine", default="llamacpp", help="backend kind serving the models (llamacpp, vllm, ...)")
    parser.add_argument("--threads", type=int, default=None,
                        help="engine threads (llama.cpp: 1 is fastest on a machine busy with other work)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/retrieval_cache"),
                        help="the retrieval check's folder: its results.json and request cache (reruns are free)")
    parser.add_argument("--templatize-model", default="qwen2.5-coder-0.5b-instruct",
                        help="the model of the gold templates (the retrieval check's --model)")
    parser.add_argument("--templatize-engine", default=None,
                        help="engine templatizing questions missing from CACHE/results.json (default --engine)")
    parser.add_argument("--faq-dir", type=Path, default=None, help="folder of the FAQ sdists (fetched if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of NOT-FIT templates")
    parser.add_argument("--limit", type=int, default=None,
                        help="the first N documents with a valid gold template, in turn from each project (a trial)")
    parser.add_argument("--batch", type=int, default=None,
                        help="documents per stage call (the cache commits each; default: the pipeline's feed for "
                             "the engine, run.batch_size rows on llama.cpp, run.requests_in_flight on vLLM)")
    parser.add_argument("--show", type=int, default=3, help="kept NOT-FIT candidates to print per model")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default CACHE/instantiation_results.json)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    # 1. the labelled documents and their gold templates
    pairs, dropped = load_pairs(args.faq_dir)
    pairs = interleave(pairs, lambda p: p.project)
    print(f"FAQ pairs: {len(pairs)} ({', '.join(f'{k} {v}' for k, v in Counter(p.project for p in pairs).items())}); "
          f"dropped {len(dropped)}: {dict(Counter(why for _, why in dropped))}")
    templates, source = gold_templates(pairs, args)
    labelled = [Labelled(p.pair_id, p.project, p.question, p.answer, templates[p.pair_id])
                for p in pairs if p.pair_id in templates]
    print(f"gold templates ({args.templatize_model}): {len(labelled)}/{len(pairs)} valid, {source}")
    if args.limit:
        labelled = interleave(labelled, lambda d: d.project)[: args.limit]
        print(f"--limit {args.limit}: {len(labelled)} documents "
              f"({', '.join(f'{k} {v}' for k, v in Counter(d.project for d in labelled).items())})")
    by_id = {d.document_id: d for d in labelled}

    # 2. FIT and NOT-FIT candidates
    chosen = candidates(labelled, args.seed)
    n_fit = sum(c.kind == FIT for c in chosen)
    not_fit = [c for c in chosen if c.kind == NOT_FIT]
    print(f"candidates: {n_fit} FIT, {len(not_fit)} NOT-FIT ({sum(c.cross_project for c in not_fit)} with a template "
          f"of another project; {len({c.template_id for c in not_fit})} distinct NOT-FIT templates)")

    # 3. each model through the instantiate stage, one engine at a time
    runs: list[ModelRun] = []
    for model in args.models:
        print(f"\ninstantiating with {model} on {args.engine} ...", file=sys.stderr, flush=True)
        runs.append(run_model(model, by_id, chosen, args))

    # 4. the report
    cols = columns([r.table for r in runs])
    summary: list[dict[str, Any]] = []
    for run in runs:
        r = rates(run.table)
        print(f"\n### {run.model} ({run.engine}): {len(labelled)} documents\n")
        print(markdown_table(run.table, cols))
        print(f"\nFIT kept rate:                  {verdict(r.fit_kept_rate, FIT_GOAL)}  ({r.fit_kept}/{r.fit})")
        print(f"NOT-FIT null-or-dropped rate:   {verdict(r.not_fit_refused_rate, NOT_FIT_GOAL)}  "
              f"({r.not_fit_refused}/{r.not_fit}; {r.not_fit_null} null)")
        if r.engine_errors:
            print(f"WARNING: {r.engine_errors} candidates failed in the engine ({ENGINE_ERROR}): left out of the rates")
        print(f"generated tokens {run.generated_tokens}, generation seconds {run.generation_seconds:.1f} "
              f"({run.generated_tokens / run.generation_seconds if run.generation_seconds else 0.0:.1f} tok/s, as "
              f"recorded); this run: engine start {run.engine_start_seconds:.1f} s, {run.engine_requests} requests "
              f"to the engine ({run.engine_tokens} tokens), {run.cache_hits} cache hits, stage "
              f"{run.run_seconds:.1f} s")
        false_kept = [c for c in run.candidates if c["kind"] == NOT_FIT and c["outcome"] == KEPT]
        for c in false_kept[: args.show]:
            print(f"  NOT-FIT kept: [{c['project']}] {by_id[c['document_id']].question[:60]!r}\n"
                  f"    template ({by_id[c['template_from']].project}): {c['template'][:90]!r}\n"
                  f"    -> {c['instruction'][:110]!r}")
        summary.append({"model": run.model, "engine": run.engine, "fit": r.fit, "fit_kept": r.fit_kept,
                        "fit_kept_rate": r.fit_kept_rate, "not_fit": r.not_fit, "not_fit_refused": r.not_fit_refused,
                        "not_fit_null": r.not_fit_null, "not_fit_refused_rate": r.not_fit_refused_rate,
                        "engine_errors": r.engine_errors, "fit_goal_met": r.fit_kept_rate >= FIT_GOAL,
                        "not_fit_goal_met": r.not_fit_refused_rate >= NOT_FIT_GOAL,
                        "generated_tokens": run.generated_tokens,
                        "generation_seconds": round(run.generation_seconds, 2),
                        "engine_start_seconds": round(run.engine_start_seconds, 2),
                        "run_seconds": round(run.run_seconds, 2), "engine_requests": run.engine_requests,
                        "engine_tokens": run.engine_tokens, "cache_hits": run.cache_hits,
                        "table": {kind: dict(counts) for kind, counts in run.table.items()}})
    print(f"\n### summary ({len(labelled)} documents; goals: FIT kept >= {FIT_GOAL:.2f}, NOT-FIT null or dropped "
          f">= {NOT_FIT_GOAL:.2f})\n")
    print("| model | engine | FIT kept | NOT-FIT null or dropped | NOT-FIT null | generated tokens | generation s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in summary:
        print(f"| {s['model']} | {s['engine']} | {s['fit_kept_rate']:.3f} ({s['fit_kept']}/{s['fit']}) "
              f"{'met' if s['fit_goal_met'] else 'NOT met'} | {s['not_fit_refused_rate']:.3f} "
              f"({s['not_fit_refused']}/{s['not_fit']}) {'met' if s['not_fit_goal_met'] else 'NOT met'} | "
              f"{s['not_fit_null']} | {s['generated_tokens']} | {s['generation_seconds']:.1f} |")

    out = args.out or args.cache / "instantiation_results.json"
    out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "goals": {"fit_kept_rate": FIT_GOAL, "not_fit_null_or_dropped_rate": NOT_FIT_GOAL},
        "gold_templates_source": source,
        "documents": [{"document_id": d.document_id, "project": d.project, "question": d.question,
                       "template_id": d.template.template_id, "template": d.template.template} for d in labelled],
        "summary": summary,
        "candidates": {run.model: run.candidates for run in runs},
    }, indent=1, default=str))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
