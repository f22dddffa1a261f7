"""Verdict parsing, and both-orders aggregation with small deterministic judges."""

from __future__ import annotations

import pytest

from fineinstructions.backends.base import Conversation, Generation, SamplingParams
from fineinstructions.backends.fake import FakeBackend
from fineinstructions.evaluation.heldout import EvalItem
from fineinstructions.evaluation.judge import (
    aggregate_grades,
    aggregate_judgments,
    grade_answers,
    judge_conversations,
    judge_head_to_head,
    parse_rating,
    parse_verdict,
    truncate,
    winner_of,
)
from fineinstructions.prompts import load_prompt

VERDICTS = {
    "Verdict: A": "A", "Verdict: B": "B", "Verdict: tie": "tie", "verdict:A": "A", "Verdict: a tie": "tie",
    "**Verdict:** Response B": "B", "`Verdict: B`": "B", "Final verdict: [[A]]": "A", "[[B]]": "B", "[[C]]": "tie",
    "A": "A", "B.": "B", "(A)": "A", "Response A": "A", "Tie": "tie", "It's a tie.": "tie", "Neither": "tie",
    "Response B is better because it answers the question.": "B", "I prefer A.": "A",
    "Both responses are equally good.": "tie", "The winner is Response A": "A", "Verdict: Both are wrong": "tie",
    "Verdict - B\nBecause it is right.": "B", "Answer: B": "B", "Better response: A": "A",
    "A\n\nResponse A is correct while B is not.": "A", "Verdict: Response A\nVerdict: Response B": "B",
    # nothing to parse, or contradictory
    "A spider has eight legs.": None, "": None, "I cannot decide.": None, "The answer is a bit long": None,
    "Response A is better. Response B is better.": None,
}


@pytest.mark.parametrize(("text", "expected"), list(VERDICTS.items()))
def test_parse_verdict(text: str, expected: str | None):
    assert parse_verdict(text) == expected


def test_winner_maps_positions_to_models():
    assert winner_of("A", "ab") == "a" and winner_of("B", "ab") == "b"
    assert winner_of("A", "ba") == "b" and winner_of("B", "ba") == "a"
    assert winner_of("tie", "ba") == "tie" and winner_of(None, "ab") == "tie"


def test_prompt_shows_both_orders_and_truncates_answers():
    prompt = load_prompt("pairwise", "v1")
    item = EvalItem("x", "Name a colour.")
    ab, ba = judge_conversations(prompt, item, "Red." + "r" * 50, "", max_answer_chars=20)
    assert ab[0]["role"] == "system" and "Ignore the length" in ab[0]["content"]
    assert len(ab) == 1 + 2 * len(prompt.examples) + 1 and ab[-1]["role"] == "user"
    assert "RESPONSE A:\nRed." in ab[-1]["content"] and "[...]" in ab[-1]["content"]
    assert "RESPONSE B:\n(no response" in ab[-1]["content"]
    assert "RESPONSE A:\n(no response" in ba[-1]["content"]
    assert all(parse_verdict(output) is not None for _, output in prompt.examples)
    assert truncate("  short ", 10) == "short"


ITEMS = [EvalItem(f"i{k}", f"Question {k}?") for k in range(6)]
ANSWERS_A = {i.item_id: f"ALPHA answer to {i.instruction}" for i in ITEMS}
ANSWERS_B = {i.item_id: f"beta answer to {i.instruction}" for i in ITEMS}


def _response_a(conversation: Conversation) -> str:
    user = conversation[-1]["content"]
    return user.split("RESPONSE A:", 1)[1].split("RESPONSE B:", 1)[0]


def _run(responder) -> dict:
    judge = FakeBackend(responder, "fake-judge")
    judgments = judge_head_to_head(judge, ITEMS, ANSWERS_A, ANSWERS_B, batch_size=4)
    assert len(judgments) == 2 * len(ITEMS) and len(judge.calls) == 2 * len(ITEMS)
    return aggregate_judgments(judgments, resamples=500)


def test_a_judge_that_always_picks_position_a_cancels_out():
    result = _run(lambda conv: "Verdict: A")
    assert result["win_rate"]["mean"] == 0.5
    assert result["first_position_preference"] == 1.0
    assert result["position_consistency"] == 0.0
    assert result["judgment_outcomes"] == {"wins": 6, "ties": 0, "losses": 6}
    assert result["instruction_outcomes"] == {"wins": 0, "ties": 6, "losses": 0}
    assert result["wilson_decisive_instructions"]["rate"] is None
    assert result["wilson_decisive_judgments"]["rate"] == 0.5


def test_a_judge_that_always_prefers_model_a_gives_one():
    result = _run(lambda conv: "Verdict: A" if "ALPHA" in _response_a(conv) else "Verdict: B")
    assert result["win_rate"] == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 6}
    assert result["first_position_preference"] == 0.5 and result["position_consistency"] == 1.0
    assert result["instruction_outcomes"]["wins"] == 6
    wilson = result["wilson_decisive_instructions"]
    assert wilson["rate"] == 1.0 and 0.5 < wilson["ci_low"] < 0.7 and wilson["n"] == 6


def test_unparseable_verdicts_are_ties_and_counted():
    result = _run(lambda conv: "I am not sure." if "Question 0" in conv[-1]["content"] else "Verdict: tie")
    assert result["win_rate"]["mean"] == 0.5 and result["unparseable"] == 2 and result["failures"] == 0
    assert result["first_position_preference"] is None and result["position_consistency"] == 1.0
    assert result["position_consistency_n"] == 5  # the unparsed instruction has no parsed pair


class _FailingJudge:
    model_id = "broken"

    def __init__(self, raise_error: bool):
        from fineinstructions.backends.base import BackendStats

        self.raise_error = raise_error
        self.stats = BackendStats()

    def generate(self, conversations, sampling: SamplingParams) -> list[Generation]:
        if self.raise_error:
            raise ConnectionError("judge server down")
        return [Generation("", error="http_503") for _ in conversations]

    def count_tokens(self, texts):
        return [0 for _ in texts]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("raise_error", [True, False])
def test_judge_failures_are_counted_not_scored(raise_error: bool):
    judgments = judge_head_to_head(_FailingJudge(raise_error), ITEMS[:2], ANSWERS_A, ANSWERS_B)
    result = aggregate_judgments(judgments)
    assert result["failures"] == 4 and result["win_rate"]["mean"] is None and result["instructions_scored"] == 0
    assert all(j.error for j in judgments)


# -- single-answer grading ---------------------------------------------------------------------------------

RATINGS = {"Rating: 7": 7, "Rating: [[3]]": 3, "**Rating:** 10": 10, "rating = 1": 1, "[[9]]": 9, "8/10": 8,
           "6": 6, "Score: 4/10\nIt is partly right.": 4, "Rating: 0": None, "Rating: 11": None, "": None,
           "The answer is good.": None, "Rating: 5\nRating: 2": 2}


@pytest.mark.parametrize(("text", "expected"), list(RATINGS.items()))
def test_parse_rating(text: str, expected: int | None):
    assert parse_rating(text) == expected


def _response(conversation: Conversation) -> str:
    return conversation[-1]["content"].split("RESPONSE:", 1)[1]


def _grade(responder) -> dict:
    judge = FakeBackend(responder, "fake-judge")
    grades = grade_answers(judge, ITEMS, {"a": ANSWERS_A, "b": ANSWERS_B}, batch_size=4)
    assert len(grades) == 2 * len(ITEMS) and len(judge.calls) == 2 * len(ITEMS)
    assert all("RESPONSE A" not in c[-1]["content"] for c in judge.calls)  # one answer per call: no positions
    return aggregate_grades(grades, "a", "b", resamples=500)


def test_single_grading_compares_ratings_per_instruction():
    result = _grade(lambda conv: "Rating: 8" if "ALPHA" in _response(conv) else "Rating: 3")
    assert result["win_rate"] == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 6}
    assert result["instruction_outcomes"] == {"wins": 6, "ties": 0, "losses": 0}
    assert result["mean_rating"]["a"]["mean"] == 8.0 and result["mean_rating"]["b"]["mean"] == 3.0
    assert result["rating_histogram"]["b"]["3"] == 6


def test_single_grading_ties_and_unparseable_ratings():
    result = _grade(lambda conv: "no idea" if "Question 0" in conv[-1]["content"] else "Rating: 5")
    assert result["win_rate"]["mean"] == 0.5 and result["instructions_scored"] == 5
    assert result["unparseable"] == 2 and result["failures"] == 0
    assert result["wilson_decisive_instructions"]["rate"] is None


def test_single_prompt_examples_parse():
    prompt = load_prompt("single", "v1")
    assert {parse_rating(output) for _, output in prompt.examples} == {10, 6, 2, 1}


def test_head_to_head_reports_the_length_controlled_win_rate_from_answer_lengths():
    judge = FakeBackend(lambda conv: "Verdict: A" if "ALPHA" in _response_a(conv) else "Verdict: B", "fake-judge")
    judgments = judge_head_to_head(judge, ITEMS, ANSWERS_A, ANSWERS_B, batch_size=4)
    lengths = {item.item_id: (5 + i, 5) for i, item in enumerate(ITEMS)}
    result = aggregate_judgments(judgments, resamples=200, lengths=lengths)
    controlled = result["length_controlled_win_rate"]
    assert controlled["n"] == len(ITEMS) and controlled["mean"] > 0.9  # a wins whatever the lengths
    assert aggregate_judgments(judgments, resamples=200)["length_controlled_win_rate"] is None


def test_grading_against_the_reference_shows_it_and_skips_items_without_one():
    items = [EvalItem(f"r{k}", f"Question {k}?", reference=f"REF{k}" if k < 4 else None) for k in range(6)]
    answers = {model: {i.item_id: f"{prefix} {i.item_id}" for i in items} for model, prefix in (("a", "ALPHA"),
                                                                                              ("b", "beta"))}
    judge = FakeBackend(lambda conv: "Rating: 9" if "ALPHA" in conv[-1]["content"] else "Rating: 2", "fake-judge")
    grades = grade_answers(judge, items, answers, against_reference=True)
    assert len(grades) == 8 and {g.item_id for g in grades} == {"r0", "r1", "r2", "r3"}
    shown = judge.calls[0][-1]["content"]
    assert "REFERENCE ANSWER:\nREF0" in shown and "ANSWER TO GRADE:\nALPHA r0" in shown
    result = aggregate_grades(grades, "a", "b", resamples=200)
    assert result["win_rate"]["mean"] == 1.0 and result["instructions"] == 4
    examples = load_prompt("reference", "v1").examples
    assert examples and all(parse_rating(out) for _, out in examples)
