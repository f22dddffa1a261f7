"""`<excerpt>first words<...>last words</excerpt>` markers: strict expansion and excerpt coverage.

A marker stands for the one document span that starts with "first words" and ends with the nearest
following "last words" (in document order), both matched as whole words. Matching tolerates differences
in whitespace only (and case, only when the exact match finds nothing). A marker that matches no span, or
spans with different text, is unresolved: it is reported, never guessed.

Excerpt coverage counts the characters of marker spans plus verbatim copies: runs of at least
`min_copy_words` consecutive words that the model wrote out and that appear word for word in the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EXCERPT = re.compile(r"<excerpt>(.*?)</excerpt>", re.S)
ELLIPSIS = re.compile(r"<\s*(?:\.\.\.|…)\s*>")
_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\S+")
DEFAULT_MIN_COPY_WORDS = 6


@dataclass
class ExpandedAnswer:
    text: str
    coverage: float
    excerpts: int
    spans: list[tuple[int, int]] = field(default_factory=list)
    unresolved: list[tuple[str, str]] = field(default_factory=list)
    excerpt_chars: int = 0  # characters the markers expanded to
    copied_chars: int = 0  # characters written out verbatim (runs of >= min_copy_words words)

    @property
    def resolved(self) -> bool:
        return not self.unresolved


class NormalizedText:
    """Text with whitespace runs collapsed to one space, and a map back to original offsets."""

    def __init__(self, text: str):
        chars: list[str] = []
        offsets: list[int] = []
        previous_space = True
        for i, ch in enumerate(text):
            if ch.isspace():
                if previous_space:
                    continue
                chars.append(" ")
                previous_space = True
            else:
                chars.append(ch)
                previous_space = False
            offsets.append(i)
        self.original = text
        self.text = "".join(chars)
        self.offsets = offsets
        self._folded: NormalizedText | None = None

    def folded(self) -> NormalizedText:
        """The same text lower-cased character by character (offsets unchanged), for the case-blind retry."""
        if self._folded is None:
            folded = object.__new__(NormalizedText)
            folded.original = self.original
            folded.text = fold_case(self.text)
            folded.offsets = self.offsets
            folded._folded = folded
            self._folded = folded
        return self._folded

    def find_all(self, needle: str, start_boundary: bool = True, end_boundary: bool = False) -> list[int]:
        """Start offsets of `needle`, optionally only where it starts (ends) at a word boundary."""
        found, start = [], self.text.find(needle)
        while start != -1:
            if (not start_boundary or self.word_boundary(start)) and (
                not end_boundary or self.word_boundary(start + len(needle))
            ):
                found.append(start)
            start = self.text.find(needle, start + 1)
        return found

    def word_boundary(self, offset: int) -> bool:
        """True unless `offset` falls between two word characters (so "cat" never matches in "category")."""
        if offset <= 0 or offset >= len(self.text):
            return True
        return not (self.text[offset - 1].isalnum() and self.text[offset].isalnum())

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Original [start, end) for normalized [start, end)."""
        return self.offsets[start], self.offsets[end - 1] + 1


def normalize_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def fold_case(text: str) -> str:
    """Lower-case each character whose lower case is one character, so offsets stay aligned."""
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def resolve_marker(doc: NormalizedText, body: str) -> tuple[int, int] | str:
    """Locate one marker body in the document; return the original span or a named reason.

    Matching is exact up to whitespace; only when that finds nothing is it retried blind to case
    (models often capitalise a quote that starts mid-sentence). The unique-span rule holds for both.
    """
    parts = ELLIPSIS.split(body)
    if len(parts) > 2:
        return "excerpt_malformed"
    first = normalize_ws(parts[0])
    last = normalize_ws(parts[-1]) if len(parts) == 2 else None
    if not first or (last is not None and not last):
        return "excerpt_empty"
    located = _locate(doc, first, last)
    if located == "excerpt_not_found":
        located = _locate(doc.folded(), fold_case(first), fold_case(last) if last is not None else None)
    return located


def _locate(doc: NormalizedText, first: str, last: str | None) -> tuple[int, int] | str:
    candidates: set[tuple[int, int]] = set()
    for start in doc.find_all(first, end_boundary=True):
        if last is None:
            candidates.add((start, start + len(first)))
            continue
        end_of_first = start + len(first)
        # The nearest whole-word "last words" that ends at or after the end of "first words" (they may overlap).
        probe = doc.text.find(last, max(start, end_of_first - len(last)))
        while probe != -1 and (probe + len(last) < end_of_first or not doc.word_boundary(probe)
                               or not doc.word_boundary(probe + len(last))):
            probe = doc.text.find(last, probe + 1)
        if probe != -1:
            candidates.add((start, probe + len(last)))
    if not candidates:
        return "excerpt_not_found"
    texts = {doc.text[s:e] for s, e in candidates}
    if len(texts) > 1:
        return "excerpt_ambiguous"
    start, end = min(candidates)
    return doc.original_span(start, end)


def expand_excerpts(answer: str, document: str | NormalizedText,
                    min_copy_words: int = DEFAULT_MIN_COPY_WORDS) -> ExpandedAnswer:
    """Replace every excerpt marker with its document span and measure excerpt coverage.

    `min_copy_words` <= 0 counts marker spans only.
    """
    doc = document if isinstance(document, NormalizedText) else NormalizedText(document)
    pieces: list[str] = []
    free_pieces: list[int] = []  # indexes of the model's own text among `pieces`
    excerpt_chars = 0
    cursor = 0
    spans: list[tuple[int, int]] = []
    unresolved: list[tuple[str, str]] = []
    count = 0
    for marker in EXCERPT.finditer(answer):
        count += 1
        free_pieces.append(len(pieces))
        pieces.append(answer[cursor : marker.start()])
        cursor = marker.end()
        located = resolve_marker(doc, marker.group(1))
        if isinstance(located, str):
            unresolved.append((marker.group(0), located))
            pieces.append(marker.group(0))
            continue
        span_text = doc.original[located[0] : located[1]]
        spans.append(located)
        pieces.append(span_text)
        excerpt_chars += len(span_text)
    free_pieces.append(len(pieces))
    pieces.append(answer[cursor:])
    if answer.count("<excerpt>") != count or answer.count("</excerpt>") != count:
        unresolved.append(("<excerpt>", "excerpt_broken_tags"))
    copied_chars = 0
    if min_copy_words > 0:
        copied_chars = sum(verbatim_copy_chars(pieces[i], doc, min_copy_words) for i in free_pieces)
    # Coverage is measured on the stripped text; strip the pieces' outer whitespace the same way.
    joined = "".join(pieces)
    text = joined.strip()
    coverage = (excerpt_chars + copied_chars) / len(text) if text else 0.0
    return ExpandedAnswer(text, min(coverage, 1.0), count, spans, unresolved, excerpt_chars, copied_chars)


def verbatim_copy_chars(text: str, document: str | NormalizedText, min_words: int = DEFAULT_MIN_COPY_WORDS) -> int:
    """Characters of `text` inside runs of >= `min_words` consecutive words found word for word in the document.

    Words are whitespace-separated tokens compared exactly (punctuation included), at word boundaries of
    the document; whitespace between them may differ. A run is a chain of overlapping `min_words`-word
    windows that each occur in the document.
    """
    if min_words <= 0:
        return 0
    doc = document if isinstance(document, NormalizedText) else NormalizedText(document)
    tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    covered = [False] * len(tokens)
    for i in range(len(tokens) - min_words + 1):
        window = " ".join(t for _, _, t in tokens[i : i + min_words])
        if doc.find_all(window, end_boundary=True):
            for j in range(i, i + min_words):
                covered[j] = True
    chars, run_start = 0, None
    for i, is_covered in enumerate([*covered, False]):
        if is_covered and run_start is None:
            run_start = i
        elif not is_covered and run_start is not None:
            chars += tokens[i - 1][1] - tokens[run_start][0]
            run_start = None
    return chars
