"""Labelled judge check: does the pair judge separate good pairs from deliberately broken copies of them?

    .venv/bin/python benchmarks/judge_check.py --runs --labelled runs/wiki100 \\
        benchmarks/data/judge_labels_wiki100.json --faq 40 --seed 0 --engine vllm

(the recorded run, 2026-12-02, after `fineinstructions run --config configs/wiki100.yaml`: 325 items; ROC AUC 1.5B
judge-v2 0.685, judge-v3 0.590, judge-v4 0.576, 0.5B 0.485, 135M 0.498; README "Quality checks of the method").
`--labelled RUN LABELS` takes every pair the run's judge stage saw with its hand label: good ones get broken
copies, bad ones are negatives as they are (`real_bad`); `--runs DIR ...` takes a run's kept pairs as good
instead (biased: its own judge kept them).

(on a CPU: `--engine llamacpp --threads 1`; `--prompt-version v2 v1 flow_judge` compares prompt versions on the
same items; `--limit N` takes only the first N pairs of the run folders; `--kinds` a subset of the broken kinds).
Every judge request goes through the project's request cache under `--cache` (default /tmp/judge_check_cache),
so a rerun with the same items, models and prompts costs no model call.

Good items (label 1):
- pipeline pairs: the kept pairs of each run folder in `--runs` (its `dataset/rank-R/part-N.parquet`, one
  `records.Pair` a row: `instantiated_instruction`, `answer` with the excerpt markers expanded, `text` = the
  whole document, `template`). These passed the judge of the run that made them (its model, its prompt, score
  >= judge.min_score), so the pass rate of good pipeline items is optimistic for that judge: selection bias.
- human pairs (`--faq N`, default 40, a seeded sample): real FAQ entries of Celery, Scrapy and Django
  (benchmarks/faq_source.py): the question as instruction, its answer section as both the answer and the
  document. These are human-written pairs, not pipeline pairs; ROC AUC is reported on each subset and on both
  together.

Broken copies (label 0), one of each kind per good item, deterministic for `--seed`, each labelled with its kind
(donors come from another document of the same subset where there is one, else of the other subset):
- answer_swapped: this pair's document and instruction, the answer of a pair of another document;
- unfilled_variable: one variable of the instruction left unfilled. With a template (pipeline pairs), the
  instruction is aligned with it (contracts.templates.variable_values) and one variable's value is put back as
  `<fi>description</fi>`; without one (FAQ pairs) or when the value cannot be found, a noun phrase (a name-like
  word such as "Scrapy" or "django-admin", else the words after a determiner) is replaced by `<fi>topic</fi>`;
- ungrammatical: the instruction's words put in a seeded random order (another first word where it can);
- unsupported_sentence: the answer plus a fluent sentence the document does not contain, taken from another
  document's answer (6-35 words, not opening with a word that leans on a sentence before it; a fixed made-up
  factual sentence when no donor sentence fits);
- unanswered_instruction: the instruction of a pair of another document, with this pair's document and answer.

Judge: the project's JudgeStage built by `from_config` over `stage_config({"judge": {"backend": ...,
"prompt_version": ...}})` with a StageContext over a BackendPool behind a RequestCache, the backend
`BackendConfig(kind=--engine, model=M, n_threads=--threads, n_ctx=--n-ctx)`; one engine alive at a time
(models in turn; the prompt versions of one model share its engine).

Per model and prompt version: ROC AUC of the judge score (good = positive; rank formula, ties count half; an
unparseable judgement ranks below every score) on all items, the pipeline subset and the FAQ subset; accuracy at
the configured threshold (kept = score >= judge.min_score, as the filter decides; unparseable = not kept); the
pass rate of good items and of each broken kind, with mean scores; unparseable replies; judge seconds (wall time
of the stage's calls, engine load apart; ~0 on a cached rerun). Markdown tables on stdout; `--out` (default
CACHE/judge_results.json) keeps every item, every score and feedback, and the metrics.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS.parent) not in sys.path:  # run as a script: `benchmarks` importable as a package
    sys.path.insert(0, str(BENCHMARKS.parent))

DEFAULT_MODELS = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
KINDS = ("answer_swapped", "unfilled_variable", "ungrammatical", "unsupported_sentence", "unanswered_instruction")
SUBSETS = ("pipeline", "faq")
FALLBACK_PLACEHOLDER = "topic"
# Used only when no other document offers a fitting sentence: fluent, factual-sounding and made up.
FALLBACK_SENTENCES = (
    "It was first described in 1874 by the Austrian engineer Karl Weidner.",
    "Independent studies have found that it lowers running costs by about 40 percent.",
    "The approach was later adopted as a national standard in more than sixty countries.",
)


@dataclass
class Item:
    """One labelled (document, instruction, answer) triple for the judge."""

    item_id: str
    subset: str  # pipeline | faq
    kind: str  # good | one of KINDS
    label: int  # 1 good, 0 broken
    source_id: str  # the good item this one is a copy of (itself for a good item)
    document_id: str
    document: str
    instruction: str
    answer: str
    template: str = ""
    origin: str = ""  # run folder or FAQ project of the source pair
    detail: dict[str, Any] = field(default_factory=dict)  # what was broken and with what


# -- metrics (pure functions) -------------------------------------------------------------------------------


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC by the rank formula (Mann-Whitney U / n_pos n_neg), tied scores sharing their mean rank, so a
    tie between a positive and a negative counts half. None without positives or negatives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each distinct score
    ranks = mean_rank[inverse.reshape(-1)]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_score(score: int | None) -> float:
    """The value an item gets for the AUC: its score, or 0 (below every score) when unparseable."""
    return 0.0 if score is None else float(score)


@dataclass
class Metrics:
    items: int
    auc: dict[str, float | None]  # all | pipeline | faq
    accuracy: float
    good_pass: float
    good_items: int
    pass_by_kind: dict[str, tuple[int, int]]  # kind (good included) -> (passed, items)
    mean_by_kind: dict[str, float | None]
    unparseable: int
    unparseable_by_kind: dict[str, int]
    score_counts: dict[str, int]


def evaluate(items: Sequence[Item], scores: Mapping[str, int | None], min_score: int) -> Metrics:
    """Every metric of one judge over `items` (scores by item id; None = unparseable)."""
    def kept(item: Item) -> bool:
        score = scores.get(item.item_id)
        return score is not None and score >= min_score

    auc: dict[str, float | None] = {}
    for name in ("all", *SUBSETS):
        chosen = [i for i in items if name == "all" or i.subset == name]
        auc[name] = roc_auc([auc_score(scores.get(i.item_id)) for i in chosen], [i.label for i in chosen])
    correct = sum(kept(i) == bool(i.label) for i in items)
    pass_by_kind: dict[str, tuple[int, int]] = {}
    mean_by_kind: dict[str, float | None] = {}
    for kind in ("good", *KINDS, "real_bad"):
        chosen = [i for i in items if i.kind == kind]
        if not chosen:
            continue
        pass_by_kind[kind] = (sum(kept(i) for i in chosen), len(chosen))
        parsed = [s for i in chosen if (s := scores.get(i.item_id)) is not None]
        mean_by_kind[kind] = float(np.mean(parsed)) if parsed else None
    good = pass_by_kind.get("good", (0, 0))
    unparseable = Counter(i.kind for i in items if scores.get(i.item_id) is None)
    counts = Counter(str(scores.get(i.item_id)) for i in items)
    return Metrics(items=len(items), auc=auc, accuracy=correct / max(1, len(items)),
                   good_pass=good[0] / max(1, good[1]), good_items=good[1], pass_by_kind=pass_by_kind,
                   mean_by_kind=mean_by_kind, unparseable=sum(unparseable.values()),
                   unparseable_by_kind=dict(unparseable), score_counts=dict(sorted(counts.items())))


# -- the good items -----------------------------------------------------------------------------------------


def run_pairs(runs: Sequence[Path]) -> tuple[list[Item], list[str]]:
    """The kept pairs of each run folder as good items (deduplicated by document, instruction and answer),
    and a line per folder saying what it gave."""
    import pyarrow.parquet as pq

    from fineinstructions.io.run_folder import RunFolder
    from fineinstructions.records import Pair

    items: list[Item] = []
    lines: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for k, run in enumerate(runs):
        files = RunFolder(run).dataset_files()
        pairs = [p for f in files for p in Pair.from_table(pq.read_table(f))]
        fresh = 0
        for pair in pairs:
            key = (pair.text, pair.instantiated_instruction, pair.answer)
            if key in seen:
                continue
            seen.add(key)
            fresh += 1
            items.append(Item(
                item_id=f"run{k}-{len(items):04d}", subset="pipeline", kind="good", label=1, source_id="",
                document_id=f"run{k}/{pair.document_id}", document=pair.text,
                instruction=pair.instantiated_instruction, answer=pair.answer, template=pair.template,
                origin=str(run), detail={"template_id": pair.template_id, "run_judge_score": pair.judge_score,
                                         "run_judge_model": pair.judge_model,
                                         "run_judge_prompt_version": pair.judge_prompt_version}))
        documents = len({p.document_id for p in pairs})
        note = "" if files else " (no dataset/rank-*/part-*.parquet: has the run finished?)"
        lines.append(f"{run}: {len(files)} dataset parts, {len(pairs)} kept pairs of {documents} documents, "
                     f"{fresh} new{note}")
    for item in items:
        item.source_id = item.item_id
    return items, lines


def labelled_pairs(run: Path, labels_file: Path) -> tuple[list[Item], str]:
    """Every pair the run's judge stage saw (all that passed the instantiate gates, before the judge and the
    filter: no selection by the run's own judge), with the hand label of `labels_file` (`"document_id|template_id"`
    -> good/bad): good pairs become good items (with broken copies), bad ones `real_bad` items (real pipeline
    junk, label 0, no copies). Unlabelled pairs are left out and counted."""
    import pyarrow.parquet as pq

    from fineinstructions.records import Pair

    labels = json.loads(labels_file.read_text(encoding="utf-8"))["labels"]
    files = sorted(run.glob("work/judge/rank-*/shard-*.parquet"))
    pairs = [p for f in files for p in Pair.from_table(pq.read_table(f))]
    items: list[Item] = []
    unlabelled = 0
    for pair in pairs:
        entry = labels.get(f"{pair.document_id}|{pair.template_id}")
        if entry is None:
            unlabelled += 1
            continue
        good = entry["label"] == "good"
        item_id = f"lab-{len(items):04d}"
        items.append(Item(
            item_id=item_id, subset="pipeline", kind="good" if good else "real_bad", label=int(good),
            source_id=item_id, document_id=f"lab/{pair.document_id}", document=pair.text,
            instruction=pair.instantiated_instruction, answer=pair.answer, template=pair.template, origin=str(run),
            detail={"template_id": pair.template_id, "run_judge_score": pair.judge_score}))
    good_n = sum(i.label for i in items)
    return items, (f"{run}: {len(pairs)} judged pairs, {len(items)} hand-labelled ({good_n} good, "
                   f"{len(items) - good_n} real_bad), {unlabelled} unlabelled left out")


def faq_items(n: int, seed: int, faq_dir: Path | None) -> tuple[list[Item], str]:
    """A seeded sample of `n` real FAQ entries as good items (question -> instruction, answer section ->
    answer and document), and a line saying what was read."""
    from benchmarks.faq_source import FaqSourceError, load_pairs

    if n <= 0:
        return [], "FAQ pairs: none asked for (--faq 0)"
    try:
        pairs, dropped = load_pairs(faq_dir)
    except FaqSourceError as err:
        return [], f"FAQ pairs: none ({err})"
    chosen = sorted(random.Random(f"faq:{seed}").sample(range(len(pairs)), min(n, len(pairs))))
    items = [Item(item_id=pairs[i].pair_id, subset="faq", kind="good", label=1, source_id=pairs[i].pair_id,
                  document_id=pairs[i].pair_id, document=pairs[i].answer, instruction=pairs[i].question,
                  answer=pairs[i].answer, origin=pairs[i].project) for i in chosen]
    projects = Counter(i.origin for i in items)
    return items, (f"FAQ pairs: {len(items)} of {len(pairs)} (seed {seed}; "
                   f"{', '.join(f'{k} {v}' for k, v in projects.items())}; {len(dropped)} entries dropped by "
                   f"faq_source)")


# -- the broken copies --------------------------------------------------------------------------------------

_WORD_SPAN = re.compile(r"\S+")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’.-]*[A-Za-z0-9]|[A-Za-z0-9]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(":".join((str(seed), *parts)))  # str seeds are hashed with SHA-512: stable across runs


def donors(item: Item, pool: Sequence[Item]) -> list[Item]:
    """Good items of another document, of the same subset where there is one, else of any subset."""
    other = [p for p in pool if p.document.strip() != item.document.strip()]
    same = [p for p in other if p.subset == item.subset]
    return same or other


def fill_value_span(instruction: str, value_text: str) -> tuple[int, int] | None:
    """Where a variable's value (as `variable_values` reports it: case-folded) stands in the instruction."""
    words = value_text.split()
    if not words:
        return None
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    found = re.search(pattern, instruction, re.I)
    return (found.start(), found.end()) if found else None


def unfill_from_template(instruction: str, template: str, rng: random.Random) -> tuple[str, dict[str, Any]] | None:
    """The instruction with one of its template's variables put back as `<fi>description</fi>`, or None."""
    from fineinstructions.contracts.templates import template_variables, variable_values

    descriptions = template_variables(template)
    if not descriptions:
        return None
    values = [v for v in variable_values(instruction, template) if v.text]
    rng.shuffle(values)
    for value in values:
        span = fill_value_span(instruction, value.text)
        if span is None:
            continue
        description = descriptions[value.variables[0]]
        broken = f"{instruction[:span[0]]}<fi>{description}</fi>{instruction[span[1]:]}"
        return broken, {"how": "template variable", "value": instruction[span[0]:span[1]], "description": description}
    return None


_DETERMINERS = frozenset({"a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that",
                          "these", "those"})


def _technical(token: str, first: bool) -> bool:
    """A name-like token: capitalised inside a sentence ("I" and its contractions aside), or holding a digit,
    hyphen, dot or underscore."""
    if token == "I" or token.startswith(("I'", "I’")):
        return False
    return (token[:1].isupper() and not first) or any(c.isdigit() or c in "-._" for c in token)


def _sentence_starts(text: str, tokens: Sequence[re.Match[str]]) -> list[bool]:
    """Per token: whether it opens a sentence (the first, or after . ? ! or :)."""
    return [i == 0 or text[: t.start()].rstrip()[-1:] in (".", "?", "!", ":") for i, t in enumerate(tokens)]


def unfill_content_words(instruction: str, placeholder: str = FALLBACK_PLACEHOLDER) -> tuple[str, dict[str, Any]]:
    """The instruction with one noun phrase as `<fi>placeholder</fi>`: the longest name-like content word (with
    the capitalised words next to it: "Carl Linnaeus"), else the content words (at most 2) after the first
    determiner followed by one ("a periodic task"), else the longest content word."""
    from fineinstructions.contracts.templates import content_words

    tokens = list(_TOKEN.finditer(instruction))
    words = [t.group() for t in tokens]
    content = [bool(content_words(w)) for w in words]
    starts = _sentence_starts(instruction, tokens)
    span: tuple[int, int] | None = None  # token range [first, last)
    named = [i for i, w in enumerate(words) if content[i] and _technical(w, starts[i])]
    if named:
        first = max(named, key=lambda i: (len(words[i]), -i))
        last = first + 1
        while (first > 0 and not starts[first] and content[first - 1]
               and _technical(words[first - 1], starts[first - 1])):
            first -= 1
        while last < len(words) and content[last] and _technical(words[last], starts[last]):
            last += 1
        span = (first, last)
    if span is None:
        for i, w in enumerate(words[:-1]):
            if w.lower() in _DETERMINERS and content[i + 1]:
                last = i + 1
                while last < len(words) and content[last] and last - (i + 1) < 2:
                    last += 1
                span = (i + 1, last)
                break
    if span is None:
        candidates = [i for i in range(len(words)) if content[i]] or list(range(len(words)))
        if not candidates:
            return f"{instruction} <fi>{placeholder}</fi>", {"how": "appended", "value": ""}
        longest = max(candidates, key=lambda i: (len(words[i]), i))
        span = (longest, longest + 1)
    begin, end = tokens[span[0]].start(), tokens[span[1] - 1].end()
    return (f"{instruction[:begin]}<fi>{placeholder}</fi>{instruction[end:]}",
            {"how": "content words", "value": instruction[begin:end], "description": placeholder})


def scramble(instruction: str, rng: random.Random, tries: int = 50) -> str:
    """The instruction's words in a random order (another first word where possible), its final punctuation
    kept at the end; a one-word instruction gets its letters reversed."""
    text = instruction.strip()
    end = ""
    while text and text[-1] in ".?!":
        end, text = text[-1] + end, text[:-1]
    words = text.split()
    if len(set(words)) < 2:
        return (text[::-1] + end) if text[::-1] != text else f"{text} {text}{end}"
    best = words
    for _ in range(tries):
        order = words[:]
        rng.shuffle(order)
        if order != words:
            best = order
            if order[0] != words[0]:
                break
    return " ".join(best) + end


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


# Openers of a sentence that leans on the one before it (or answers a question): not fit to stand alone.
_ANAPHORIC_OPENERS = frozenset({"yes", "no", "see", "note", "this", "that", "these", "those", "it", "they", "so",
                                "but", "and", "also", "however", "then", "here", "there", "such", "otherwise"})


def fitting_sentences(answer: str, document: str) -> list[str]:
    """Sentences of `answer` fit to append as unsupported: 6-35 words, capitalised, ending in a full stop, mostly
    letters, and not found in `document`."""
    out = []
    doc = _normalized(document)
    for sentence in _SENTENCE_END.split(" ".join(answer.split())):
        words = sentence.split()
        letters = sum(c.isalpha() for c in sentence)
        visible = sum(not c.isspace() for c in sentence)
        if (6 <= len(words) <= 35 and sentence[:1].isupper() and sentence.endswith(".")
                and words[0].strip(",").lower() not in _ANAPHORIC_OPENERS
                and letters >= 0.8 * max(1, visible) and not any(c in sentence for c in "<>`{}[]|*")
                and _normalized(sentence) not in doc):
            out.append(sentence)
    return out


def break_item(item: Item, kind: str, pool: Sequence[Item], seed: int) -> Item:
    """A broken copy of the good `item`, of one kind (see the module docstring)."""
    rng = _rng(seed, item.item_id, kind)
    others = donors(item, pool)
    instruction, answer, detail = item.instruction, item.answer, {}
    if kind in ("answer_swapped", "unanswered_instruction"):
        if not others:
            raise SystemExit(f"{kind}: needs good pairs of at least two documents")
        donor = rng.choice(others)
        if kind == "answer_swapped":
            answer = donor.answer
        else:
            instruction = donor.instruction
        detail = {"donor": donor.item_id}
    elif kind == "unfilled_variable":
        made = unfill_from_template(instruction, item.template, rng) if item.template else None
        instruction, detail = made or unfill_content_words(instruction)
    elif kind == "ungrammatical":
        instruction = scramble(instruction, rng)
    elif kind == "unsupported_sentence":
        candidates = [(d.item_id, s) for d in others for s in fitting_sentences(d.answer, item.document)]
        if candidates:
            donor_id, sentence = rng.choice(candidates)
        else:
            donor_id, sentence = "fixed", rng.choice(FALLBACK_SENTENCES)
        answer = f"{item.answer.rstrip()} {sentence}"
        detail = {"donor": donor_id, "sentence": sentence}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return Item(item_id=f"{item.item_id}~{kind}", subset=item.subset, kind=kind, label=0, source_id=item.item_id,
                document_id=item.document_id, document=item.document, instruction=instruction, answer=answer,
                template=item.template, origin=item.origin, detail=detail)


def build_items(good: Sequence[Item], kinds: Iterable[str], seed: int) -> list[Item]:
    """Each good item followed by its broken copies (one per kind): one document's items back to back."""
    kinds = list(kinds)
    pool = [i for i in good if i.label]
    out: list[Item] = []
    for item in good:
        out.append(item)
        if item.label:  # a real bad pair (`real_bad`) is a negative as it is
            out += [break_item(item, kind, pool, seed) for kind in kinds]
    return out


# -- judging ------------------------------------------------------------------------------------------------


@dataclass
class JudgeRun:
    model: str
    prompt_version: str
    prompt: str  # the prompt file's own version name
    engine: str
    load_s: float
    judge_s: float
    cache_hits: int
    cache_misses: int
    scores: dict[str, int | None]
    feedback: dict[str, str]
    min_score: int
    metrics: Metrics | None = None


def judge_items(items: Sequence[Item], args: argparse.Namespace, model: str) -> list[JudgeRun]:
    """Judge every item with the JudgeStage built from config for `model`, once per prompt version; the engine
    is shared by the prompt versions and closed before returning."""
    from fineinstructions.backends.cache import RequestCache
    from fineinstructions.backends.factory import BackendPool
    from fineinstructions.config import stage_config
    from fineinstructions.records import Pair
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.judge import JudgeStage
    from fineinstructions.stages.registry import StageSpec

    backend: dict[str, Any] = {"kind": args.engine, "model": model, "n_ctx": args.n_ctx}
    if args.threads:
        backend["n_threads"] = args.threads
    args.cache.mkdir(parents=True, exist_ok=True)
    pool = BackendPool(RequestCache(args.cache / "requests.sqlite"))
    # The item id rides in template_id (the stage copies every field it does not set) to find each judgement.
    pairs = [Pair(document_id=i.document_id, template_id=i.item_id, text=i.document, template=i.template,
                  instantiated_instruction=i.instruction, answer=i.answer) for i in items]
    runs: list[JudgeRun] = []
    try:
        for version in args.prompt_version:
            judge: dict[str, Any] = {"backend": backend}
            if version:
                judge["prompt_version"] = version
            config = stage_config({"judge": judge})
            context = StageContext(config, backends=pool)
            t0 = time.perf_counter()
            stage = JudgeStage.from_config(config, context)  # the engine loads here (once per model)
            load_s = time.perf_counter() - t0
            scores: dict[str, int | None] = {}
            feedback: dict[str, str] = {}
            batch = args.batch or StageSpec("judge", config, "", "").feed_size  # as the pipeline feeds this engine
            t0 = time.perf_counter()
            for at in range(0, len(pairs), batch):  # the cache commits every call: a stopped run keeps them
                for pair in stage.process(pairs[at : at + batch]).records:
                    scores[pair.template_id] = pair.judge_score
                    feedback[pair.template_id] = pair.judge_feedback
                done = min(at + batch, len(pairs))
                print(f"  {model} / {config.judge.prompt_version}: judged {done}/{len(pairs)} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            judge_s = time.perf_counter() - t0
            extra = stage.backend.stats.extra
            runs.append(JudgeRun(model=model, prompt_version=config.judge.prompt_version, prompt=stage.prompt.version,
                                 engine=args.engine, load_s=load_s, judge_s=judge_s,
                                 cache_hits=int(extra.get("cache_hits", 0)),
                                 cache_misses=int(extra.get("cache_misses", 0)), scores=scores, feedback=feedback,
                                 min_score=config.judge.min_score))
    finally:
        pool.close()  # one engine alive at a time
        gc.collect()
    return runs


# -- report -------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_pass(passed: tuple[int, int] | None, mean: float | None) -> str:
    if passed is None:
        return "-"
    return f"{100 * passed[0] / max(1, passed[1]):.0f} % ({passed[0]}/{passed[1]}), mean {fmt(mean, 2)}"


def print_tables(runs: Sequence[JudgeRun], kinds: Sequence[str]) -> None:
    threshold = runs[0].min_score if runs else 4
    print(f"\n### Separation (good = positive; kept = score >= judge.min_score {threshold})\n")
    print("| judge model | prompt | items | ROC AUC all | AUC pipeline | AUC FAQ | accuracy @ threshold | "
          "good pass rate | unparseable | judge s | load s | cache hits/misses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        m = r.metrics
        assert m is not None
        print(f"| {r.model} | {r.prompt_version} | {m.items} | {fmt(m.auc['all'])} | {fmt(m.auc['pipeline'])} | "
              f"{fmt(m.auc['faq'])} | {100 * m.accuracy:.1f} % | {100 * m.good_pass:.1f} % ({m.good_items}) | "
              f"{m.unparseable} | {r.judge_s:.0f} | {r.load_s:.1f} | {r.cache_hits}/{r.cache_misses} |")
    print("\n### Pass rate per kind (share kept at the threshold, (kept/items), mean parsed score)\n")
    columns = ["good", *kinds, "real_bad"]
    print("| judge model | prompt | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for r in runs:
        m = r.metrics
        assert m is not None
        print(f"| {r.model} | {r.prompt_version} | "
              + " | ".join(fmt_pass(m.pass_by_kind.get(k), m.mean_by_kind.get(k)) for k in columns) + " |")
    print("\n### Score counts (None = unparseable)\n")
    print("| judge model | prompt | scores | unparseable by kind |")
    print("| --- | --- | --- | --- |")
    for r in runs:
        m = r.metrics
        assert m is not None
        counts = ", ".join(f"{k}: {v}" for k, v in m.score_counts.items())
        unparsed = ", ".join(f"{k} {v}" for k, v in m.unparseable_by_kind.items()) or "-"
        print(f"| {r.model} | {r.prompt_version} | {counts} | {unparsed} |")


def show_examples(items: Sequence[Item], kinds: Sequence[str]) -> None:
    """One broken copy of each kind per subset, beside its good item, to see what the judge is shown."""
    by_id = {i.item_id: i for i in items}
    print("examples of broken copies:")
    for subset in SUBSETS:
        for kind in kinds:
            example = next((i for i in items if i.subset == subset and i.kind == kind), None)
            if example is None:
                continue
            good = by_id[example.source_id]
            changed = ("answer", good.answer, example.answer) if example.answer != good.answer else (
                "instruction", good.instruction, example.instruction)
            print(f"  [{subset}] {kind}: {changed[0]} {changed[1][-90:]!r}\n"
                  f"  {' ' * (len(subset) + len(kind) + 4)}-> {changed[2][-90:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, nargs="*", default=[Path("runs/demo")],
                        help="run folders whose kept pairs (dataset/) are the good pipeline pairs")
    parser.add_argument("--limit", type=int, default=None, help="take the first N pairs of the run folders only")
    parser.add_argument("--labelled", nargs=2, type=Path, action="append", default=[], metavar=("RUN", "LABELS"),
                        help="a run folder and a hand-label file for the pairs its judge stage saw (repeatable), "
                             "e.g. runs/wiki100 benchmarks/data/judge_labels_wiki100.json")
    parser.add_argument("--faq", type=int, default=40, help="real human FAQ pairs to add (0: none)")
    parser.add_argument("--faq-dir", type=Path, default=None, help="folder of the FAQ sdists (fetched if missing)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="broken kinds to make")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="judge models (registry names, GGUF paths or model folders), judged in turn")
    parser.add_argument("--engine", default="llamacpp", help="backend kind serving the models (e.g. vllm)")
    parser.add_argument("--threads", type=int, default=None,
                        help="engine threads (llama.cpp: 1 is fastest on a machine busy with other work)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context of the judge engine")
    parser.add_argument("--prompt-version", nargs="+", default=[""],
                        help="judge prompt versions to compare (v2, v1, flow_judge; default: the config's)")
    parser.add_argument("--batch", type=int, default=None,
                        help="pairs per judge stage call (default: the pipeline's feed for the engine, "
                             "run.batch_size on llama.cpp, run.requests_in_flight on vLLM)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the FAQ sample and the broken copies")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/judge_check_cache"),
                        help="folder of the request cache (reruns are free)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default CACHE/judge_results.json)")
    args = parser.parse_args()

    # 1. good items: kept pipeline pairs, then human FAQ pairs
    pipeline, lines = run_pairs(args.runs)
    for line in lines:
        print(line)
    if args.limit is not None:
        pipeline = pipeline[: args.limit]
    for run, labels_file in args.labelled:
        labelled, line = labelled_pairs(run, labels_file)
        print(line)
        pipeline += labelled
    faq, faq_line = faq_items(args.faq, args.seed, args.faq_dir)
    print(faq_line)
    good = pipeline + faq
    if len({i.document for i in good}) < 2:
        raise SystemExit("need good pairs of at least two documents (give --runs with a dataset, or --faq N)")
    print(f"good items: {len(pipeline)} pipeline pairs of {len({i.document_id for i in pipeline})} documents "
          f"+ {len(faq)} FAQ pairs")

    # 2. broken copies
    items = build_items(good, args.kinds, args.seed)
    unsupported = [i for i in items if i.kind == "unsupported_sentence"]
    fixed = sum(i.detail.get("donor") == "fixed" for i in unsupported)
    via_template = sum(i.detail.get("how") == "template variable" for i in items if i.kind == "unfilled_variable")
    print(f"items: {len(items)} ({dict(Counter(i.kind for i in items))}); unfilled_variable from the template: "
          f"{via_template}; unsupported sentences from a fixed list (no donor fits): {fixed}")
    show_examples(items, args.kinds)

    # 3. judge, one model (engine) at a time
    runs: list[JudgeRun] = []
    for model in args.models:
        for run in judge_items(items, args, model):
            run.metrics = evaluate(items, run.scores, run.min_score)
            runs.append(run)
            m = run.metrics
            print(f"{model} / {run.prompt_version}: AUC {fmt(m.auc['all'])}, accuracy {100 * m.accuracy:.1f} %, "
                  f"judge {run.judge_s:.0f} s, load {run.load_s:.0f} s", flush=True)
    print_tables(runs, args.kinds)

    out = args.out or args.cache / "judge_results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    documents = {i.document_id: i.document for i in items}
    out.write_text(json.dumps({
        "args": {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in vars(args).items()},
        "documents": documents,
        "items": [{k: v for k, v in asdict(i).items() if k != "document"} for i in items],
        "judges": [asdict(r) for r in runs],
    }, indent=1, default=str))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
