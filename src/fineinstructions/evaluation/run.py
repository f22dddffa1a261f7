"""`fineinstructions evaluate`: models answer the same held-out instructions and are compared.

    EVAL_DIR/answers/<name>.json   one model's answers and reference log-likelihoods (reused when unchanged)
    EVAL_DIR/answers.jsonl         every answer, one row per (model, instruction)
    EVAL_DIR/judgments.jsonl       every judge call: instruction, order, verdict, raw reply
    EVAL_DIR/scores.json           all figures (reference scores with bootstrap CIs, head-to-head, warnings)
    EVAL_DIR/evaluation.png        training curves, win rate, ROUGE-L / F1, reference log-likelihood
    EVAL_DIR/cache/requests.sqlite every finished answer and judge call, so a killed run resumes for free

Every file is written atomically. Model "a" is the first model (the first arm of a training run: its `pairs`
arm, or FineInstructions in an experiment); the head-to-head compares it with every other arm's model of the same
seed (`evaluation.arms`), and every win rate is a's. With more than two models, scores.json also holds every
comparison ("comparisons") and each arm's figures pooled over its seeds ("arms").

EVAL_DIR is claimed like every run folder (`io.run_folder.RunFolder`): locked for the run's life and a non-empty
foreign folder refused. An evaluation never refuses its own folder: answers/ and the cache are keyed by what made
them and reused, and when the configuration changed the files the older one wrote (scores, judgments, grades,
plot) are removed, so none outlives the settings it came from.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fineinstructions.backends.base import Backend, SamplingParams
from fineinstructions.backends.cache import CachedBackend, RequestCache
from fineinstructions.backends.models import DEFAULT_GENERATOR
from fineinstructions.config import BackendConfig
from fineinstructions.errors import FineInstructionsError
from fineinstructions.evaluation.answers import ModelAnswers, ModelSpec, answer_with_model
from fineinstructions.evaluation.arms import (
    MEASURES,
    arm_measures,
    model_arm,
    pairings,
    pooled_preferences,
    pooled_values,
)
from fineinstructions.evaluation.heldout import (
    EvaluationInputError,
    InstructionSet,
    heldout_path,
    load_instructions,
)
from fineinstructions.evaluation.judge import (
    aggregate_grades,
    aggregate_judgments,
    grade_answers,
    item_preferences,
    judge_head_to_head,
)
from fineinstructions.evaluation.plots import read_metrics, write_evaluation_plot
from fineinstructions.evaluation.scores import reference_scores
from fineinstructions.evaluation.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, paired_bootstrap_ci
from fineinstructions.hashing import json_hash
from fineinstructions.io.atomic import atomic_path, write_json_atomic
from fineinstructions.io.run_folder import RunFolder

log = logging.getLogger(__name__)

ARMS = (("pairs", "pairs/final"), ("documents", "documents/final"))
TOKENIZER_WARNING = ("the models use different tokenizers: per-token log-likelihood and perplexity are not "
                     "comparable across them; compare the per-character log-likelihood")


def default_judge() -> BackendConfig:
    """The embedded 1.5B instruction model on the fastest engine here (`auto`)."""
    return BackendConfig(kind="auto", model=DEFAULT_GENERATOR)


JUDGE_MODES = ("pairwise", "single", "both", "reference", "all")
# Which judged measures each mode runs: head-to-head, each answer rated alone, each answer against the reference.
MODE_MEASURES = {"pairwise": ("pairwise",), "single": ("single",), "both": ("pairwise", "single"),
                 "reference": ("reference",), "all": ("pairwise", "single", "reference")}
# What an evaluation writes from its answers, judgments and settings (removed when the configuration changes);
# answers/<name>.json and cache/ are reused across configurations (each is keyed by what made it).
DERIVED = ("answers.jsonl", "judgments.jsonl", "grades.jsonl", "reference_grades.jsonl", "scores.json",
           "evaluation.png")


@dataclass
class EvaluationSettings:
    """How answers are generated and judged (greedy, 128 new tokens, the embedded 1.5B judge by default)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    judge: BackendConfig | None = field(default_factory=default_judge)  # None: no head-to-head
    judge_max_tokens: int = 32
    judge_max_answer_chars: int = 1500
    judge_batch_size: int = 16
    judge_prompt_version: str = "v1"
    # pairwise (AlpacaEval-style, both orders, with a length-controlled win rate), single (each answer rated 1-10
    # alone), reference (each answer rated 1-10 against the item's reference answer, MixEval-style), both
    # (pairwise + single), all (the three)
    judge_mode: str = "pairwise"
    grade_prompt_version: str = "v1"
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_new_tokens, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        value = asdict(self)
        value["judge"] = self.judge.model_dump() if self.judge else None
        return value


def train_dir_models(train_dir: str | Path) -> list[ModelSpec]:
    """The models of a training run in its manifest's order (first arm first, seeds in turn); a folder without
    a manifest: pairs/final (a) and documents/final (b)."""
    from fineinstructions.training.run import manifest_models, read_manifest

    root = Path(train_dir)
    if not root.is_dir():
        raise EvaluationInputError(f"training run folder not found: {root}")
    manifest = read_manifest(root)
    named = ([(name, str(entry.get("final") or f"{name}/final")) for name, entry in manifest_models(manifest).items()]
             if manifest and manifest.get("arms") else list(ARMS))
    specs = []
    for name, relative in named:
        folder = root / relative
        if not (folder / "config.json").is_file():
            raise EvaluationInputError(f"{root} has no finished {name} model ({relative}/config.json is missing); "
                                       "finish `fineinstructions train` or pass --model NAME=PATH for each model")
        specs.append(ModelSpec(name, str(folder)))
    return specs


def check_models(models: Sequence[ModelSpec]) -> None:
    """At least two models with distinct names; local folders must hold a causal LM (checked from config.json
    alone)."""
    from fineinstructions.backends.transformers_engine import NotACausalLM, check_causal_lm

    if len(models) < 2:
        raise EvaluationInputError(f"evaluate compares at least two models, got {len(models)}")
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EvaluationInputError(f"the models need different names; repeated: {', '.join(repeated)}")
    for spec in models:
        path = Path(spec.path).expanduser()
        looks_local = path.exists() or spec.path.startswith(("/", ".", "~"))
        if not looks_local:
            continue  # a Hub name: checked when it loads
        if not path.is_dir() or not (path / "config.json").is_file():
            raise EvaluationInputError(f"model {spec.name!r}: {path} is not a model folder (no config.json)")
        try:
            check_causal_lm(str(path))
        except NotACausalLM as err:
            raise EvaluationInputError(f"model {spec.name!r}: {err}") from err


LL_METRICS = ("logprob_per_token", "logprob_per_char")
_SEP = "\x1f"  # between a comparison's index and an item id while all comparisons are judged in one call


def score_references(instructions: InstructionSet, answers: Sequence[ModelAnswers],
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any] | None:
    """ROUGE-L, token F1, exact match and reference log-likelihood per model (bootstrap CIs over instructions),
    and the paired differences a - b. None when no instruction has a reference answer."""
    references = {i.item_id: i.reference for i in instructions.items if i.reference is not None}
    if not references:
        return None
    tokenizers_match = len({a.tokenizer_sha for a in answers}) == 1
    values: dict[str, dict[str, dict[str, float]]] = {}  # model -> metric -> item id -> value
    per_model: dict[str, Any] = {}
    for model in answers:
        series: dict[str, dict[str, float]] = {k: {} for k in ("rouge_l", "token_f1", "exact_match", *LL_METRICS)}
        failures = 0
        for row in model.rows:
            reference = references.get(row["item_id"])
            if reference is None:
                continue
            failures += row.get("error") is not None
            for key, value in reference_scores(row["answer"] or "", reference).items():
                series[key][row["item_id"]] = value
            if row.get("reference_tokens") and row.get("reference_chars"):
                series["logprob_per_token"][row["item_id"]] = row["reference_logprob"] / row["reference_tokens"]
                series["logprob_per_char"][row["item_id"]] = row["reference_logprob"] / row["reference_chars"]
        figures: dict[str, Any] = {k: bootstrap_ci(list(v.values()), resamples, seed) for k, v in series.items()}
        token = figures["logprob_per_token"]
        # Perplexity of the geometric mean per-token probability; its interval maps the log-prob interval.
        figures["perplexity"] = ({"mean": math.exp(-token["mean"]), "ci_low": math.exp(-token["ci_high"]),
                                  "ci_high": math.exp(-token["ci_low"]), "n": token["n"]}
                                 if token["mean"] is not None else {"mean": None, "ci_low": None, "ci_high": None,
                                                                    "n": 0})
        figures["answer_failures"] = failures
        per_model[model.name] = figures
        values[model.name] = series
    differences: dict[str, Any] = {}
    if len(answers) == 2:
        a, b = (values[m.name] for m in answers)
        for key in a:
            if key == "logprob_per_token" and not tokenizers_match:
                continue  # token counts differ: per-token figures do not pair up
            common = [i for i in a[key] if i in b[key]]
            if common:
                differences[key] = paired_bootstrap_ci([a[key][i] for i in common], [b[key][i] for i in common],
                                                       resamples, seed)
    result = {"items": len(references), "tokenizers_match": tokenizers_match,
              "warning": None if tokenizers_match else TOKENIZER_WARNING,
              "per_model": per_model, "difference_a_minus_b": differences}
    if len(answers) > 2:
        names = [m.name for m in answers]
        result["arms"] = {key: pooled_values({m: values[m][key] for m in names}, names, resamples, seed)
                          for key in ("rouge_l", "token_f1", "exact_match")}
    return result


def _answer_summary(model: ModelAnswers) -> dict[str, Any]:
    ok = [r for r in model.rows if r.get("error") is None]
    return {"name": model.name, "path": model.path, "prompt_format": model.prompt_format,
            "tokenizer_sha": model.tokenizer_sha, "trained_on": model.meta.get("trained_on"),
            "tokens_seen": model.meta.get("tokens_seen"), "answers": len(model.rows),
            "answer_failures": len(model.rows) - len(ok),
            "mean_answer_tokens": sum(r["completion_tokens"] for r in ok) / len(ok) if ok else None,
            "mean_answer_words": sum(len(r["answer"].split()) for r in ok) / len(ok) if ok else None,
            "hit_max_tokens": sum(r["finish_reason"] == "length" for r in ok),
            "seconds": round(model.seconds, 2), "reused": model.reused}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _run_judges(out_dir: Path, instructions: InstructionSet, answers: Sequence[ModelAnswers],
                settings: EvaluationSettings, cache: RequestCache, judge_backend: Backend | None,
                say: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The judged comparisons `settings.judge_mode` asks for: (pairwise head-to-head, single-answer grading,
    reference-graded correctness)."""
    if judge_backend is None and settings.judge is None:
        return None, None, None
    modes = MODE_MEASURES[settings.judge_mode]
    owned = None
    if judge_backend is None:
        from fineinstructions.backends.factory import create_backend

        assert settings.judge is not None
        try:
            owned = judge_backend = create_backend(settings.judge)
        except Exception as err:  # missing model, engine not installed, server unreachable: say so, keep scores
            message = f"cannot start the judge backend ({settings.judge.kind} {settings.judge.model}): {err}"
            log.error(message)
            failed = {"error": message, "judge": settings.judge.model}
            pairwise, single, graded = (failed if measure in modes else None
                                        for measure in ("pairwise", "single", "reference"))
            return pairwise, single, graded
    try:
        pairwise = _pairwise(out_dir, instructions, answers, settings, cache, judge_backend, say) \
            if "pairwise" in modes else None
        single = _single(out_dir, instructions, answers, settings, cache, judge_backend, say) \
            if "single" in modes else None
        graded = _single(out_dir, instructions, answers, settings, cache, judge_backend, say, against_reference=True) \
            if "reference" in modes else None
    finally:
        if owned is not None:
            owned.close()
    return pairwise, single, graded


def _pairwise(out_dir: Path, instructions: InstructionSet, answers: Sequence[ModelAnswers],
              settings: EvaluationSettings, cache: RequestCache, judge_backend: Backend, say: Any) -> dict[str, Any]:
    """The first model's arm against every other arm, seed against seed, in both orders (see `evaluation.arms`):
    the first comparison's figures at the top, every comparison and the seed-pooled win rates beside them."""
    judge_id = judge_backend.model_id
    cached = CachedBackend(judge_backend, cache, f"evaluate-judge:{settings.judge_prompt_version}")
    by_name = {m.name: m for m in answers}
    texts = {m.name: {r["item_id"]: r["answer"] or "" for r in m.rows} for m in answers}
    words = {name: {i: len(text.split()) for i, text in by_item.items()} for name, by_item in texts.items()}
    matched = pairings([m.name for m in answers])
    say(f"judging {len(instructions.items)} instructions in both orders with {judge_id}: "
        f"{'; '.join(f'{a} vs {b}' for a, b in matched)}")
    # Every comparison's requests in one call, so the judge gets full batches (a comparison alone is only
    # 2 x instructions requests); the comparison is carried in the item id and taken off again below.
    items: list[Any] = []
    answers_a: dict[str, str] = {}
    answers_b: dict[str, str] = {}
    for k, (a, b) in enumerate(matched):
        for item in instructions.items:
            key = f"{k}{_SEP}{item.item_id}"
            items.append(replace(item, item_id=key))
            answers_a[key], answers_b[key] = texts[a][item.item_id], texts[b][item.item_id]
    start = time.perf_counter()
    judged = judge_head_to_head(cached, items, answers_a, answers_b, prompt_version=settings.judge_prompt_version,
                                max_tokens=settings.judge_max_tokens,
                                max_answer_chars=settings.judge_max_answer_chars,
                                batch_size=settings.judge_batch_size, seed=settings.seed)
    by_comparison: list[list[Any]] = [[] for _ in matched]
    for j in judged:
        index, item_id = j.item_id.split(_SEP, 1)
        by_comparison[int(index)].append(replace(j, item_id=item_id))
    rows: list[dict[str, Any]] = []
    comparisons: dict[str, Any] = {}
    preferences = []
    for (a, b), judgments in zip(matched, by_comparison, strict=True):
        order_model = {"ab": (a, b), "ba": (b, a)}
        rows += [j.to_json() | {"response_a_model": order_model[j.order][0],
                                "response_b_model": order_model[j.order][1], "judge": judge_id} for j in judgments]
        lengths = {i: (words[a].get(i, 0), words[b].get(i, 0)) for i in texts[a]}
        result = aggregate_judgments(judgments, settings.bootstrap_resamples, settings.seed, lengths)
        result = _with_run_facts(result, (by_name[a], by_name[b]), cached, settings.judge_prompt_version, start,
                                 judgments)
        if len(matched) > 1:  # judged in one call with the others: its time and calls are the total's
            for key in ("seconds", "judge_calls", "cache_hits"):
                result.pop(key)
        comparisons[f"{a} vs {b}"] = result
        preferences.append((a, b, item_preferences(judgments)))
    _write_jsonl(out_dir / "judgments.jsonl", rows)
    return _first_with_all(comparisons, answers, {"arms": pooled_preferences(
        preferences, words, settings.bootstrap_resamples, settings.seed)}, cached, settings.judge_prompt_version,
                           start, judged)


def _first_with_all(comparisons: dict[str, dict[str, Any]], answers: Sequence[ModelAnswers],
                    pooled: dict[str, Any], cached: CachedBackend, prompt_version: str, start: float,
                    calls: Sequence[Any]) -> dict[str, Any]:
    """The first comparison's figures at the top (labelled with its own two models), and with several: every
    comparison, the figures pooled over seeds, and the counts and failures of all of them."""
    name, first = next(iter(comparisons.items()))
    if len(comparisons) == 1:
        return first
    by_name = {m.name: m for m in answers}
    a, b = name.split(" vs ", 1)
    result = {k: v for k, v in first.items() if k != "error"} | pooled | {"comparisons": comparisons}
    for key in ("unparseable", "failures", "judgments"):
        result[key] = sum(c.get(key, 0) for c in comparisons.values())
    result = _with_run_facts(result, (by_name[a], by_name[b]), cached, prompt_version, start, calls)
    failed = [f"{n}: {c['error']}" for n, c in comparisons.items() if c.get("error")]
    if failed and "error" not in result:
        result["failed_comparisons"] = failed
    return result


def _single(out_dir: Path, instructions: InstructionSet, answers: Sequence[ModelAnswers],
            settings: EvaluationSettings, cache: RequestCache, judge_backend: Backend, say: Any,
            against_reference: bool = False) -> dict[str, Any]:
    """Each answer rated 1-10 alone, or `against_reference` (items with a reference answer only)."""
    judge_id = judge_backend.model_id
    kind = "reference" if against_reference else "grade"
    cached = CachedBackend(judge_backend, cache, f"evaluate-{kind}:{settings.grade_prompt_version}")
    by_model = {m.name: {r["item_id"]: r["answer"] or "" for r in m.rows} for m in answers}
    graded = sum(bool(i.reference) for i in instructions.items) if against_reference else len(instructions.items)
    say(f"rating each answer to {graded} instructions "
        f"{'against its reference' if against_reference else 'alone'} (1-10) with {judge_id}")
    start = time.perf_counter()
    grades = grade_answers(cached, instructions.items, by_model, prompt_version=settings.grade_prompt_version,
                           max_tokens=min(settings.judge_max_tokens, 16),
                           max_answer_chars=settings.judge_max_answer_chars,
                           batch_size=settings.judge_batch_size, seed=settings.seed,
                           against_reference=against_reference)
    _write_jsonl(out_dir / ("reference_grades.jsonl" if against_reference else "grades.jsonl"),
                 [g.to_json() | {"judge": judge_id} for g in grades])
    names = [m.name for m in answers]
    results = {f"{a} vs {b}": aggregate_grades(grades, a, b, settings.bootstrap_resamples, settings.seed)
               for a, b in pairings(names)}
    by_name = {m.name: m for m in answers}
    name, first = next(iter(results.items()))
    a, b = name.split(" vs ", 1)
    if len(names) > 2:
        ratings = {name: {g.item_id: float(g.rating) for g in grades if g.model == name and g.rating is not None}
                   for name in names}
        first = first | {"mean_rating": {name: bootstrap_ci(list(values.values()), settings.bootstrap_resamples,
                                                             settings.seed) for name, values in ratings.items()},
                         "comparisons": results,
                         "arms": pooled_values(ratings, names, settings.bootstrap_resamples, settings.seed),
                         "unparseable": sum(g.rating is None and g.error is None for g in grades),
                         "failures": sum(g.error is not None for g in grades), "judgments": len(grades)}
    return _with_run_facts(first, (by_name[a], by_name[b]), cached, settings.grade_prompt_version, start, grades)


def _with_run_facts(result: dict[str, Any], answers: Sequence[ModelAnswers], cached: CachedBackend,
                    prompt_version: str, start: float, calls: Sequence[Any], failures: int | None = None
                    ) -> dict[str, Any]:
    """A judged comparison's figures plus who judged what, how long it took, what was paid, and a total failure."""
    result |= {"model_a": answers[0].name, "model_b": answers[1].name, "judge": cached.model_id,
               "prompt_version": prompt_version, "seconds": round(time.perf_counter() - start, 2),
               "judge_calls": int(cached.stats.requests), "cache_hits": int(cached.stats.extra.get("cache_hits", 0))}
    if calls and (result["failures"] if failures is None else failures) == len(calls):
        first = next((c.error for c in calls if c.error), "unknown error")
        result["error"] = f"the judge failed on all {len(calls)} requests: {first}"
    return result


def older_evaluation(out: Path) -> str | None:
    """"" for an evaluation folder made before run folders were marked (it kept no fingerprint), else None."""
    made = ("scores.json", "answers.jsonl", "answers", "cache/requests.sqlite")
    return "" if any((out / name).exists() for name in made) else None


def evaluation_fingerprint(models: Sequence[ModelSpec], instructions: InstructionSet, settings: EvaluationSettings,
                           judge_backend: Backend | None) -> str:
    """What decides an evaluation's figures: the models, the instructions and references, the settings, the judge."""
    return json_hash({"models": [(m.name, m.path) for m in models],
                      "items": [(i.item_id, i.reference) for i in instructions.items],
                      "settings": settings.describe(),
                      "judge_backend": judge_backend.model_id if judge_backend is not None else None})


def evaluate(out_dir: str | Path, *, train_dir: str | Path | None = None, models: Sequence[ModelSpec] | None = None,
             instructions: InstructionSet | None = None, settings: EvaluationSettings | None = None,
             judge_backend: Backend | None = None, console: Any = None) -> dict[str, Any]:
    """Run (or resume) an evaluation and return the figures written to scores.json.

    Models come from `models` or from `train_dir`'s models; instructions from `instructions` or
    `train_dir/heldout.jsonl`. `judge_backend`, when given, is used instead of `settings.judge` (and is not
    closed). Raises EvaluationInputError on unusable input before any model is loaded.
    """
    settings = settings or EvaluationSettings()
    if settings.judge_mode not in JUDGE_MODES:
        raise EvaluationInputError(f"judge mode must be one of {', '.join(JUDGE_MODES)}, got {settings.judge_mode!r}")
    out = Path(out_dir)

    def say(message: str) -> None:
        if console is not None:
            console.print(message)
        log.info(message)

    if models is None:
        if train_dir is None:
            raise EvaluationInputError("name a training run folder or two models (--model NAME=PATH)")
        models = train_dir_models(train_dir)
    check_models(models)
    if instructions is None:
        if train_dir is None:
            raise EvaluationInputError("name an instruction set (--instructions FILE) or a training run folder")
        instructions = load_instructions(heldout_path(train_dir), "instruction", "reference", seed=settings.seed)
    with RunFolder(out, older=older_evaluation, kind="evaluation") as folder:
        folder.claim(evaluation_fingerprint(models, instructions, settings, judge_backend), force=True,
                     derived=DERIVED, what="evaluation", temporaries=[out, out / "answers"])
        scores = _evaluate(out, train_dir, models, instructions, settings, judge_backend, say)
    if console is not None:
        print_scores(scores, console)
    return scores


def _evaluate(out: Path, train_dir: str | Path | None, models: Sequence[ModelSpec], instructions: InstructionSet,
              settings: EvaluationSettings, judge_backend: Backend | None, say: Any) -> dict[str, Any]:
    cache = RequestCache(out / "cache" / "requests.sqlite")
    try:
        answers: list[ModelAnswers] = []
        for spec in models:
            say(f"answering {len(instructions.items)} instructions with {spec.name} ({spec.path})")
            try:
                model_answers = answer_with_model(
                    spec, instructions.items, out, settings.sampling(), batch_size=settings.batch_size,
                    device=settings.device, dtype=settings.dtype, cache=cache, threads=settings.threads,
                    progress=lambda name, done, total: log.info("%s: %d/%d answers", name, done, total))
            except FineInstructionsError as err:  # NotACausalLM, a model not found, a bad dtype or prompt format
                raise EvaluationInputError(f"model {spec.name!r}: {err}") from err
            if model_answers.reused:
                say(f"  {spec.name}: reusing finished answers")
            answers.append(model_answers)
        _write_jsonl(out / "answers.jsonl", [row for model in answers for row in model.rows])
        warnings = []
        reference = score_references(instructions, answers, settings.bootstrap_resamples, settings.seed)
        if reference and reference["warning"]:
            warnings.append(reference["warning"])
        pairwise, single, graded = _run_judges(out, instructions, answers, settings, cache, judge_backend, say)
        for result in (pairwise, single, graded):
            if result and result.get("error") and result["error"] not in warnings:
                warnings.append(result["error"])
            warnings += [f"a head-to-head failed: {failed}" for failed in (result or {}).get("failed_comparisons", [])]
        if pairwise and pairwise.get("unparseable"):
            warnings.append(f"{pairwise['unparseable']} judge verdicts were unparseable (counted as ties)")
        for result in (single, graded):
            if result and result.get("unparseable"):
                warnings.append(f"{result['unparseable']} judge ratings were unparseable (left out)")
    finally:
        cache.close()
    curves = {spec.name: read_metrics(Path(spec.path).expanduser().parent / "metrics.jsonl") for spec in models}
    training = {name: _curve_summary(rows) for name, rows in curves.items() if rows}
    scores = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "train_dir": str(train_dir) if train_dir else None,
              "instructions": instructions.describe(), "models": [_answer_summary(m) for m in answers],
              "reference": reference, "pairwise": pairwise, "single": single, "reference_graded": graded,
              "training": training,
              "warnings": warnings, "settings": settings.describe()}
    write_json_atomic(out / "scores.json", scores)
    write_evaluation_plot(out / "evaluation.png", scores, curves)
    return scores


def _curve_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    last = rows[-1]
    evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    return {"steps": last.get("step"), "tokens": last.get("tokens"), "final_loss": last.get("loss"),
            "final_eval_loss": evals[-1] if evals else None}


def _slope(pairwise: dict[str, Any]) -> str:
    controlled = pairwise.get("length_controlled_win_rate") or {}
    return "-" if controlled.get("slope") is None else f"{controlled['slope']:+.2f}"


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def print_scores(scores: dict[str, Any], console: Any) -> None:
    """A rich table of the figures in scores.json."""
    from rich.table import Table

    names = [m["name"] for m in scores["models"]]
    table = Table(title=f"evaluation on {scores['instructions']['items']} instructions "
                        f"({scores['instructions']['source']})")
    table.add_column("figure (95% CI)")
    for name in names:
        table.add_column(name, justify="right")
    for label, key in (("answers failed", "answer_failures"), ("mean answer tokens", "mean_answer_tokens"),
                       ("answers hitting max tokens", "hit_max_tokens")):
        values = [m.get(key) for m in scores["models"]]
        table.add_row(label, *("-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
                               for v in values))
    reference = scores.get("reference")
    if reference:
        for label, key in (("ROUGE-L F1", "rouge_l"), ("token F1", "token_f1"), ("exact match", "exact_match"),
                           ("ref. log-prob / token", "logprob_per_token"), ("ref. perplexity", "perplexity"),
                           ("ref. log-prob / char", "logprob_per_char")):
            digits = 2 if key == "perplexity" else 3
            table.add_row(label, *(_fmt(reference["per_model"][n].get(key), digits) for n in names))
    for name, summary in (scores.get("training") or {}).items():
        if name in names:
            table.caption = (table.caption or "") + (f"{name}: final loss {summary['final_loss']}, "
                                                     f"{summary['tokens']} tokens. ")
    console.print(table)
    pairwise = scores.get("pairwise")
    if pairwise and pairwise.get("win_rate", {}).get("mean") is not None:
        counts = pairwise["judgment_outcomes"]
        consistency = pairwise.get("position_consistency")
        first = pairwise.get("first_position_preference")
        console.print(
            f"head-to-head ({pairwise['judge']}): win rate of {pairwise['model_a']} over {pairwise['model_b']} "
            f"{_fmt(pairwise['win_rate'])}, length-controlled {_fmt(pairwise.get('length_controlled_win_rate'))} "
            f"(slope on length {_slope(pairwise)}); judgments {counts['wins']} wins / {counts['ties']} ties / "
            f"{counts['losses']} losses; Wilson on decisive instructions "
            f"{_fmt_wilson(pairwise['wilson_decisive_instructions'])}; position consistency "
            f"{'-' if consistency is None else f'{consistency:.2f}'}; first-position preference "
            f"{'-' if first is None else f'{first:.2f}'}; unparseable {pairwise['unparseable']}, "
            f"failed {pairwise['failures']}")
    for key, title in (("single", "single-answer grading"), ("reference_graded", "graded against the reference")):
        _print_grades(scores.get(key), title, console)
    if len(names) > 2:
        console.print(arms_table(scores))
    for warning in scores.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def arms_table(scores: dict[str, Any]) -> Any:
    """A rich table of each arm's figures pooled over its seeds (`evaluation.arms.arm_measures`), 95% CIs."""
    from rich.table import Table

    measures = arm_measures(scores)
    names = [m["name"] for m in scores["models"]]
    anchor = model_arm(names[0]).arm if names else "-"
    table = Table(title=f"arms, pooled over seeds (head-to-head: {anchor} against each arm)")
    table.add_column("arm")
    for _, label in MEASURES:
        table.add_column(label, justify="right")
    for arm, figures in measures.items():
        table.add_row(arm, *(_fmt(figures.get(key), 2 if "grade" in key or "rating" in key else 3)
                             for key, _ in MEASURES))
    return table


def _print_grades(single: dict[str, Any] | None, title: str, console: Any) -> None:
    if single and single.get("win_rate", {}).get("mean") is not None:
        counts = single["instruction_outcomes"]
        means = single["mean_rating"]
        console.print(
            f"{title} ({single['judge']}): win rate of {single['model_a']} over {single['model_b']} "
            f"{_fmt(single['win_rate'])}; instructions {counts['wins']} wins / {counts['ties']} ties / "
            f"{counts['losses']} losses; Wilson on decisive instructions "
            f"{_fmt_wilson(single['wilson_decisive_instructions'])}; mean rating {single['model_a']} "
            f"{_fmt(means[single['model_a']], 2)}, {single['model_b']} {_fmt(means[single['model_b']], 2)}; "
            f"unparseable {single['unparseable']}, failed {single['failures']}")


def _fmt_wilson(stat: dict[str, Any]) -> str:
    if stat.get("rate") is None:
        return "- (no decisive outcome)"
    return f"{stat['rate']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}] (n={stat['n']})"
