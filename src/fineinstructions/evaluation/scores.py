"""Reference-based scores of an answer: ROUGE-L F1, SQuAD-style token F1 and exact match (no external scorer)."""

from __future__ import annotations

import re
import string
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
MAX_LCS_TOKENS = 2000  # longer texts are cut for ROUGE-L: the LCS table is quadratic


def rouge_tokens(text: str) -> list[str]:
    """Lowercased word tokens (letters, digits and underscores; punctuation dropped)."""
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta 1) over lowercased word tokens; 0 when either side has no words."""
    pred = rouge_tokens(prediction)[:MAX_LCS_TOKENS]
    ref = rouge_tokens(reference)[:MAX_LCS_TOKENS]
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: overlap of the normalised bags of words (1 when both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the SQuAD-normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def reference_scores(prediction: str, reference: str) -> dict[str, float]:
    """All three scores of one answer against its reference."""
    return {"rouge_l": rouge_l(prediction, reference), "token_f1": token_f1(prediction, reference),
            "exact_match": exact_match(prediction, reference)}
