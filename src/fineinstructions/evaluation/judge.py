"""AlpacaEval-style head-to-head: a judge model picks the better of two answers, in both orders.

Every instruction is judged twice, once with model a's answer as "Response A" and once with it as
"Response B", so a judge that prefers one position cancels out. Model a scores 1 for a win, 0.5 for a
tie and 0 for a loss in each order; its score on an instruction is the mean over the orders it got, and
its win rate the mean over instructions (bootstrap interval over instructions). An unparseable verdict
counts as a tie (and is counted and logged); a failed judge call counts as a failure and the order is
left out (an instruction with no usable order is left out of the win rate).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fineinstructions.backends.base import Backend, Conversation, SamplingParams
from fineinstructions.evaluation.heldout import EvalItem
from fineinstructions.evaluation.stats import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_ci,
    length_controlled_win_rate,
    wilson_interval,
)
from fineinstructions.prompts import Prompt, load_prompt

log = logging.getLogger(__name__)

ORDERS = ("ab", "ba")  # "ab": model a's answer is Response A
LOGGED_UNPARSEABLE = 5

_MARKUP = re.compile(r"[*_`#>]+")
_TIE_WORD = r"(?:tie|tied|draw|equal|equally good|equally bad|same|neither|both)"
_CHOICE = rf"(?:response|answer|output|assistant|model|option)?\s*[\[(\"']*\s*((?:it'?s\s+)?a\s+tie|{_TIE_WORD}|a|b)\b"
_KEYWORD = r"(?:verdict|decision|winner|choice|judg(?:e)?ment|(?:better|best)\s+response|answer(?=\s*:))"
_VERDICT = re.compile(rf"(?:final\s+)?{_KEYWORD}\s*(?:is|:|=|-)?\s*(?:is|:)?\s*{_CHOICE}", re.I)
_BRACKETED = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]", re.I)
_BARE = re.compile(rf"^[\[(\"']*\s*(?:response|answer|output|assistant)?\s*((?:it'?s\s+)?a\s+tie|{_TIE_WORD}|a|b)"
                   r"\s*[\])\"']*[.!:]?$", re.I)
_BETTER = re.compile(r"(?:response|answer|output|assistant)\s+(a|b)\s+(?:is|was)\s+(?:clearly\s+|much\s+|slightly\s+)?"
                     r"(?:better|superior|preferred|preferable|stronger|more\s+\w+)", re.I)
_PREFER = re.compile(r"\b(?:prefer|choose|pick|select)\s+(?:response|answer|output)?\s*(a|b)\b", re.I)
_TIE_PHRASE = re.compile(r"\b(?:it'?s\s+a\s+tie|a\s+tie|tie|draw|equally\s+(?:good|bad|helpful)|"
                         r"both\s+(?:are\s+)?(?:equally|the\s+same))\b", re.I)


def _normalise_choice(value: str) -> str:
    value = value.strip().lower()
    if value in ("a", "b"):
        return value.upper()
    return "tie"  # c ([[C]] in MT-Bench's format), tie, draw, equal, same, neither, both


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a judge's reply, or None when it names no verdict (or names both A and B).

    Accepted, in order: a `Verdict: X` line (also "final verdict", "winner", "decision"; X may be
    "Response A", "[A]", "tie", "draw", "equal"), MT-Bench's `[[A]]`/`[[B]]`/`[[C]]`, a reply that is only a
    choice ("A", "(B)", "Response A.", "Tie"), "Response A is better", "I prefer B", and tie phrases.
    """
    cleaned = _MARKUP.sub("", text or "").strip()
    if not cleaned:
        return None
    verdicts = _VERDICT.findall(cleaned)
    if verdicts:
        return _normalise_choice(verdicts[-1])
    bracketed = _BRACKETED.findall(cleaned)
    if bracketed:
        return _normalise_choice(bracketed[-1])
    lines = [line.strip() for line in cleaned.splitlines() if line.strip()]
    for line in (lines[0], lines[-1]):
        bare = _BARE.match(line)
        if bare:
            return _normalise_choice(bare.group(1))
    better = {m.upper() for m in _BETTER.findall(cleaned)} | {m.upper() for m in _PREFER.findall(cleaned)}
    if len(better) == 1:
        return better.pop()
    if not better and _TIE_PHRASE.search(cleaned):
        return "tie"
    return None


@dataclass
class Judgment:
    """One judge call: an instruction, the order its answers were shown in, and the verdict."""

    item_id: str
    order: str  # "ab": model a's answer is Response A; "ba": model b's is
    verdict: str | None  # "A", "B", "tie", or None when unparseable
    winner: str | None  # "a", "b", "tie" (unparseable -> "tie"), None when the call failed
    raw: str
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def winner_of(verdict: str | None, order: str) -> str:
    """The model ("a", "b") the verdict's position points to, or "tie" (an unparseable verdict is a tie)."""
    if verdict in (None, "tie"):
        return "tie"
    first = "a" if order == "ab" else "b"
    return first if verdict == "A" else ("b" if first == "a" else "a")


def truncate(text: str, max_chars: int) -> str:
    """An answer as shown to the judge: cut at `max_chars` with a marker; an empty answer is named."""
    text = text.strip()
    if not text:
        return "(no response: the model wrote nothing)"
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " [...]"


def judge_conversations(prompt: Prompt, item: EvalItem, answer_a: str, answer_b: str,
                        max_answer_chars: int) -> list[Conversation]:
    """The two requests of one instruction: order "ab", then order "ba" (adjacent, sharing their prefix)."""
    first, second = truncate(answer_a, max_answer_chars), truncate(answer_b, max_answer_chars)
    return [prompt.conversation(instruction=item.instruction, response_a=first, response_b=second),
            prompt.conversation(instruction=item.instruction, response_a=second, response_b=first)]


def judge_head_to_head(judge: Backend, items: Sequence[EvalItem], answers_a: Mapping[str, str],
                       answers_b: Mapping[str, str], *, prompt_version: str = "v1", max_tokens: int = 32,
                       max_answer_chars: int = 1500, batch_size: int = 16, seed: int = 0,
                       progress: Any = None) -> list[Judgment]:
    """Judge every instruction in both orders; a judge exception fails its batch's calls, not the run."""
    prompt = load_prompt("pairwise", prompt_version)
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed)
    requests: list[tuple[str, str, Conversation]] = []
    for item in items:
        pair = judge_conversations(prompt, item, answers_a[item.item_id], answers_b[item.item_id], max_answer_chars)
        requests += [(item.item_id, order, conv) for order, conv in zip(ORDERS, pair, strict=True)]
    judgments: list[Judgment] = []
    unparseable = 0
    step = max(2, batch_size - batch_size % 2)  # both orders of an instruction in one batch
    for begin in range(0, len(requests), step):
        batch = requests[begin : begin + step]
        try:
            generations = judge.generate([conv for _, _, conv in batch], sampling)
        except Exception as err:  # a custom or remote judge that raises: count the calls as failed
            log.warning("judge backend failed on %d requests: %s", len(batch), err)
            judgments += [Judgment(i, o, None, None, "", error=f"judge_error: {err}") for i, o, _ in batch]
            continue
        for (item_id, order, _), generation in zip(batch, generations, strict=True):
            if not generation.ok:
                judgments.append(Judgment(item_id, order, None, None, generation.text, generation.error,
                                          generation.prompt_tokens, generation.completion_tokens))
                continue
            verdict = parse_verdict(generation.text)
            if verdict is None:
                unparseable += 1
                if unparseable <= LOGGED_UNPARSEABLE:
                    log.warning("unparseable judge verdict (counted as a tie): %r", generation.text[:200])
            judgments.append(Judgment(item_id, order, verdict, winner_of(verdict, order), generation.text, None,
                                      generation.prompt_tokens, generation.completion_tokens))
        if progress:
            progress(len(judgments), len(requests))
    return judgments


_POINTS = {"a": 1.0, "tie": 0.5, "b": 0.0}


def item_preferences(judgments: Sequence[Judgment]) -> dict[str, float]:
    """Each instruction's preference for model a: the mean points (win 1, tie 0.5, loss 0) of its judgments
    that did not fail, over both orders; instructions whose every judgment failed are left out."""
    points: dict[str, list[float]] = {}
    for j in judgments:
        points.setdefault(j.item_id, [])
        if j.winner is not None:
            points[j.item_id].append(_POINTS[j.winner])
    return {item: sum(values) / len(values) for item, values in points.items() if values}


def aggregate_judgments(judgments: Sequence[Judgment], resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0, lengths: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Win rate of model a over b with its intervals, outcome counts, position consistency and bias; with
    `lengths` (item id -> words of a's and b's answers) also the length-controlled win rate."""
    by_item: dict[str, dict[str, Judgment]] = {}
    for j in judgments:
        by_item.setdefault(j.item_id, {})[j.order] = j
    valid = [j for j in judgments if j.winner is not None]
    item_scores: list[float] = []
    scored_items: list[str] = []
    instruction_outcomes = {"wins": 0, "ties": 0, "losses": 0}
    consistent = both_orders = 0
    for item_id, orders in by_item.items():
        usable = [j for j in orders.values() if j.winner is not None]
        if not usable:
            continue
        score = sum(_POINTS[j.winner or "tie"] for j in usable) / len(usable)
        item_scores.append(score)
        scored_items.append(item_id)
        key = "wins" if score > 0.5 else ("losses" if score < 0.5 else "ties")
        instruction_outcomes[key] += 1
        parsed = [j for j in usable if j.verdict is not None]
        if len(parsed) == 2:
            both_orders += 1
            consistent += parsed[0].winner == parsed[1].winner
    wins = sum(j.winner == "a" for j in valid)
    losses = sum(j.winner == "b" for j in valid)
    decisive = [j for j in valid if j.verdict in ("A", "B")]
    controlled = None
    if lengths is not None:
        controlled = length_controlled_win_rate(item_scores, [lengths[i][0] for i in scored_items],
                                                [lengths[i][1] for i in scored_items], resamples, seed)
    return {
        "win_rate": bootstrap_ci(item_scores, resamples, seed),
        "length_controlled_win_rate": controlled,
        "wilson_decisive_instructions": wilson_interval(instruction_outcomes["wins"],
                                                        instruction_outcomes["wins"] + instruction_outcomes["losses"]),
        "wilson_decisive_judgments": wilson_interval(wins, wins + losses),
        "instructions": len(by_item),
        "instructions_scored": len(item_scores),
        "instruction_outcomes": instruction_outcomes,
        "judgments": len(judgments),
        "judgment_outcomes": {"wins": wins, "ties": sum(j.winner == "tie" for j in valid), "losses": losses},
        "unparseable": sum(j.winner is not None and j.verdict is None for j in judgments),
        "failures": sum(j.winner is None for j in judgments),
        "position_consistency": consistent / both_orders if both_orders else None,
        "position_consistency_n": both_orders,
        "first_position_preference": (sum(j.verdict == "A" for j in decisive) / len(decisive)) if decisive else None,
        "decisive_verdicts": len(decisive),
    }


# -- single-answer grading ---------------------------------------------------------------------------------
# MT-Bench's other protocol: the judge rates each answer alone (1-10), so no answer is ever shown in a position a
# small judge could favour; the two models' ratings of an instruction are compared afterwards.

_RATING = re.compile(r"(?:rating|score|grade)\s*(?:is|:|=)?\s*\[*\s*(\d{1,2})(?:\s*/\s*10)?\s*\]*", re.I)
_BRACKETED_RATING = re.compile(r"\[\[\s*(\d{1,2})\s*\]\]")
_OUT_OF_TEN = re.compile(r"\b(\d{1,2})\s*/\s*10\b")
_BARE_RATING = re.compile(r"^\s*(\d{1,2})\s*[.!]?\s*$")


def parse_rating(text: str) -> int | None:
    """A 1-10 rating from a judge's reply ("Rating: 7", "[[7]]", "7/10", a bare "7"), or None."""
    cleaned = _MARKUP.sub("", text or "").strip()
    if not cleaned:
        return None
    for pattern in (_RATING, _BRACKETED_RATING, _OUT_OF_TEN):
        found = pattern.findall(cleaned)
        if found:
            value = int(found[-1])
            return value if 1 <= value <= 10 else None
    first_line = cleaned.splitlines()[0]
    bare = _BARE_RATING.match(first_line)
    if bare and 1 <= int(bare.group(1)) <= 10:
        return int(bare.group(1))
    return None


@dataclass
class Grade:
    """One single-answer judge call: a model's answer to an instruction and its 1-10 rating."""

    item_id: str
    model: str
    rating: int | None  # None: unparseable reply or failed call
    raw: str
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def grade_answers(judge: Backend, items: Sequence[EvalItem], answers: Mapping[str, Mapping[str, str]], *,
                  prompt_version: str = "v1", max_tokens: int = 16, max_answer_chars: int = 1500,
                  batch_size: int = 16, seed: int = 0, against_reference: bool = False) -> list[Grade]:
    """Rate every model's answer to every instruction (`answers`: model -> item_id -> answer): alone (the
    `single` prompt), or `against_reference` (the `reference` prompt, MixEval-style; items without a
    reference are left out)."""
    prompt = load_prompt("reference" if against_reference else "single", prompt_version)
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed)
    if against_reference:
        items = [item for item in items if item.reference]

    def fields(item: EvalItem, answer: str) -> dict[str, str]:
        shown = {"instruction": item.instruction, "response": truncate(answer, max_answer_chars)}
        return shown | {"reference": truncate(item.reference or "", max_answer_chars)} if against_reference else shown

    # Instruction-major order: the answers to one instruction share the prompt prefix up to the response.
    requests = [(item.item_id, model, prompt.conversation(**fields(item, by_item[item.item_id])))
                for item in items for model, by_item in answers.items()]
    grades: list[Grade] = []
    unparseable = 0
    for begin in range(0, len(requests), max(1, batch_size)):
        batch = requests[begin : begin + batch_size]
        try:
            generations = judge.generate([conv for _, _, conv in batch], sampling)
        except Exception as err:  # a custom or remote judge that raises: count the calls as failed
            log.warning("judge backend failed on %d requests: %s", len(batch), err)
            grades += [Grade(i, m, None, "", error=f"judge_error: {err}") for i, m, _ in batch]
            continue
        for (item_id, model, _), generation in zip(batch, generations, strict=True):
            rating = parse_rating(generation.text) if generation.ok else None
            if generation.ok and rating is None:
                unparseable += 1
                if unparseable <= LOGGED_UNPARSEABLE:
                    log.warning("unparseable judge rating: %r", generation.text[:200])
            grades.append(Grade(item_id, model, rating, generation.text, generation.error,
                                generation.prompt_tokens, generation.completion_tokens))
    return grades


def aggregate_grades(grades: Sequence[Grade], model_a: str, model_b: str, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict[str, Any]:
    """Mean rating per model and the win rate of a over b from per-instruction rating comparisons.

    An instruction counts when both answers got a rating: a higher rating wins (1), an equal one ties (0.5).
    """
    ratings: dict[str, dict[str, int]] = {}
    for g in grades:
        if g.rating is not None:
            ratings.setdefault(g.item_id, {})[g.model] = g.rating
    both = [(r[model_a], r[model_b]) for r in ratings.values() if model_a in r and model_b in r]
    scores = [1.0 if a > b else (0.5 if a == b else 0.0) for a, b in both]
    outcomes = {"wins": sum(a > b for a, b in both), "ties": sum(a == b for a, b in both),
                "losses": sum(a < b for a, b in both)}
    per_model = {m: [r[m] for r in ratings.values() if m in r] for m in (model_a, model_b)}
    return {
        "win_rate": bootstrap_ci(scores, resamples, seed),
        "wilson_decisive_instructions": wilson_interval(outcomes["wins"], outcomes["wins"] + outcomes["losses"]),
        "instructions": len({g.item_id for g in grades}),
        "instructions_scored": len(both),
        "instruction_outcomes": outcomes,
        "mean_rating": {m: bootstrap_ci([float(v) for v in values], resamples, seed)
                        for m, values in per_model.items()},
        "rating_histogram": {m: {str(k): values.count(k) for k in range(1, 11)} for m, values in per_model.items()},
        "unparseable": sum(g.rating is None and g.error is None for g in grades),
        "failures": sum(g.error is not None for g in grades),
        "judgments": len(grades),
    }
