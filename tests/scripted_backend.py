"""The scripted test backend as a `custom` backend factory, so other processes and Ray actors can build it.

Environment knobs for the resume benchmark: SCRIPTED_CALL_DELAY (seconds per call, default 0) and
SCRIPTED_CALL_LOG (a file that gets one line per finished engine call, so a parent process counts the calls
that were paid for across runs it kills), SCRIPTED_JUDGE=pass (the judge passes every pair, not only the
test documents' ones).
"""

from __future__ import annotations

import os
import time

from fineinstructions.backends.base import Conversation
from fineinstructions.backends.fake import FakeBackend
from tests.test_pipeline import scripted


def make() -> FakeBackend:
    delay = float(os.environ.get("SCRIPTED_CALL_DELAY", "0"))
    log = os.environ.get("SCRIPTED_CALL_LOG")
    judge_passes = os.environ.get("SCRIPTED_JUDGE") == "pass"

    def respond(conversation: Conversation) -> str:
        time.sleep(delay)
        if log:
            with open(log, "a") as handle:
                handle.write("call\n")
        if judge_passes and conversation[0]["content"].startswith("You are a strict judge"):
            return "<feedback>Grounded and responsive.</feedback><score>5</score>"
        return scripted(conversation)

    return FakeBackend(respond, model_id="scripted")


def recipes() -> FakeBackend:
    """Answers the baseline recipes' prompts: a rephrasing (wrap), QA lines (nemotron_qa), tagged items (ipt)."""
    delay = float(os.environ.get("SCRIPTED_CALL_DELAY", "0"))

    def respond(conversation: Conversation) -> str:
        time.sleep(delay)
        system, user = conversation[0]["content"], conversation[-1]["content"]
        words = user.split()
        if system.startswith("You write study questions"):
            return "\n".join(f"Question: What is word {i}? Answer: {words[i]}." for i in range(1, min(6, len(words))))
        if system.startswith("You write instruction-following"):
            return "".join(f"<QUE> Repeat word {i}. <ANS> {words[i]} </END>\n" for i in range(1, min(4, len(words))))
        if "Question:" in system:
            return f"Question: What does the passage begin with?\nAnswer: {' '.join(words[1:8])}"
        return "In other words: " + " ".join(reversed(words[1:]))

    return FakeBackend(respond, model_id="scripted-recipes")


def judge() -> FakeBackend:
    """Judges answers by length: a rating of 1 + words // 3 (at most 10), the longer answer wins head-to-head."""

    def words(text: str, label: str) -> int:
        return len(text.split(label, 1)[1].split()) if label in text else 0

    def respond(conversation: Conversation) -> str:
        user = conversation[-1]["content"]
        if "RESPONSE A" in user.upper() and "RESPONSE B" in user.upper():
            upper = user.upper()
            a = len(user[upper.index("RESPONSE A"):upper.index("RESPONSE B")].split())
            b = len(user[upper.index("RESPONSE B"):].split())
            return "Verdict: " + ("A" if a > b else "B" if b > a else "tie")
        label = "ANSWER TO GRADE:" if "ANSWER TO GRADE:" in user else "RESPONSE:"
        return f"Rating: {min(10, 1 + words(user, label) // 3)}"

    return FakeBackend(respond, model_id="scripted-judge")
