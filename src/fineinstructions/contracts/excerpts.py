"""`<excerpt>first words<...>last words</excerpt>` markers: expansion, bounded repair and excerpt coverage.

A marker stands for the one document span that starts with "first words" and ends with the nearest
following "last words" (in document order), both matched as whole words. A marker may hold more pieces
(`first<...>middle<...>last`): they must occur in that order, and the span runs from the first to the last.
A marker without `<...>` is a verbatim quote. Resolution tries, in order, and stops at the first step that
finds a candidate:

1. exact match, up to whitespace;
2. the same, blind to case (models capitalise a quote that starts mid-sentence);
3. repair: the pieces and the document compared as word keys (runs of letters and digits, case, accents,
   quotes, punctuation, markup such as `` ``code`` `` or `::`, and whitespace ignored), allowing a few word
   edits per piece (`max_word_edits`), the fewest edits in total first. A repaired span starts and ends on
   matched words, widened over the quotes, brackets and punctuation attached to them.

Whatever the step, the candidate spans must hold one text: two or more different spans are
`excerpt_ambiguous` (never guessed), none is `excerpt_not_found`, an empty piece is `excerpt_empty`.
Repaired markers are counted (`ExpandedAnswer.repaired_excerpts`).

Excerpt coverage counts the characters of marker spans plus verbatim copies: runs of at least
`min_copy_words` consecutive words that the model wrote out and that appear word for word in the document.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass, field

EXCERPT = re.compile(r"<excerpt>(.*?)</excerpt>", re.S)
ELLIPSIS = re.compile(r"<\s*(?:\.\.\.|…)\s*>")
_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\S+")
DEFAULT_MIN_COPY_WORDS = 6
MAX_REPAIR_STARTS = 2000  # a piece of common words only, with more candidate places than this, is not repaired
# A word for repair: letters and digits, with the combining marks that follow them.
_WORD_RUN = re.compile(r"(?:[^\W_][\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]*)+")
# Characters a repaired span takes in around its first (opening) and last (closing) matched word.
_OPENING = frozenset("\"'“‘«‹„‚([{`*_¿¡")
_CLOSING = frozenset("\"'”’»›)]}`*_.,;:!?…%")


@dataclass
class ExpandedAnswer:
    text: str
    coverage: float
    excerpts: int
    spans: list[tuple[int, int]] = field(default_factory=list)
    unresolved: list[tuple[str, str]] = field(default_factory=list)
    excerpt_chars: int = 0  # characters the markers expanded to
    copied_chars: int = 0  # characters written out verbatim (runs of >= min_copy_words words)
    repaired_excerpts: int = 0  # markers resolved only by repair (not copied exactly, up to whitespace and case)

    @property
    def resolved(self) -> bool:
        return not self.unresolved


_RUNS = re.compile(r"\s+|\S+")


class NormalizedText:
    """Text with whitespace runs collapsed to one space, and a map back to original offsets."""

    def __init__(self, text: str):
        chars: list[str] = []
        offsets: list[int] = []
        for run in _RUNS.finditer(text):  # whitespace and non-whitespace runs alternate
            start, end = run.span()
            if not text[start].isspace():
                chars.append(run.group())
                offsets.extend(range(start, end))
            elif start:  # a run of whitespace becomes one space, at the run's first character (none leading)
                chars.append(" ")
                offsets.append(start)
        self.original = text
        self.text = "".join(chars)
        self.offsets = offsets
        self._folded: NormalizedText | None = None
        self._words: WordIndex | None = None

    def folded(self) -> NormalizedText:
        """The same text lower-cased character by character (offsets unchanged), for the case-blind retry."""
        if self._folded is None:
            folded = object.__new__(NormalizedText)
            folded.original = self.original
            folded.text = fold_case(self.text)
            folded.offsets = self.offsets
            folded._folded = folded
            folded._words = self._words
            self._folded = folded
        return self._folded

    def words(self) -> WordIndex:
        """The original text's word keys with their offsets (built on first use, for repair)."""
        if self._words is None:
            self._words = WordIndex(self.original)
        return self._words

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


@dataclass(frozen=True)
class Located:
    """A marker's span in the original document, and whether it was found only by repair."""

    start: int
    end: int
    repaired: bool = False


def resolve_marker(doc: NormalizedText, body: str) -> tuple[int, int] | str:
    """Locate one marker body in the document; return the original span or a named reason."""
    located = locate_marker(doc, body)
    return located if isinstance(located, str) else (located.start, located.end)


def locate_marker(doc: NormalizedText, body: str) -> Located | str:
    """Locate one marker body (pieces split at `<...>`) in the document; a `Located` span or a named reason.

    Matching is exact up to whitespace; only when that finds nothing is it retried blind to case (models often
    capitalise a quote that starts mid-sentence), and only when that finds nothing too is the marker repaired
    (`repair_marker`). The unique-span rule holds for all three.
    """
    pieces = [normalize_ws(part) for part in ELLIPSIS.split(body)]
    if not all(pieces):
        return "excerpt_empty"
    located = _locate(doc, pieces)
    if located == "excerpt_not_found":
        located = _locate(doc.folded(), [fold_case(piece) for piece in pieces])
    if located == "excerpt_not_found":
        return repair_marker(doc, pieces)
    return located


def _locate(doc: NormalizedText, pieces: list[str]) -> Located | str:
    candidates: set[tuple[int, int]] = set()
    first = pieces[0]
    for start in doc.find_all(first, end_boundary=True):
        piece_start, piece_end = start, start + len(first)
        for piece in pieces[1:]:
            # The nearest whole-word piece that starts at or after the previous one's start and ends at or after
            # its end (consecutive pieces may overlap).
            probe = doc.text.find(piece, max(piece_start, piece_end - len(piece)))
            while probe != -1 and (probe + len(piece) < piece_end or not doc.word_boundary(probe)
                                   or not doc.word_boundary(probe + len(piece))):
                probe = doc.text.find(piece, probe + 1)
            if probe == -1:
                break
            piece_start, piece_end = probe, probe + len(piece)
        else:
            candidates.add((start, piece_end))
    if not candidates:
        return "excerpt_not_found"
    texts = {doc.text[s:e] for s, e in candidates}
    if len(texts) > 1:
        return "excerpt_ambiguous"
    start, end = min(candidates)
    return Located(*doc.original_span(start, end))


# -- Repair -----------------------------------------------------------------------------------------------


def word_key(word: str) -> str:
    """A word compared for repair: compatibility forms unfolded, accents dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def word_keys(text: str) -> list[str]:
    """The word keys of `text`: its runs of letters and digits; punctuation, quotes, markup and spacing drop out."""
    return [word_key(m.group()) for m in _WORD_RUN.finditer(text)]


class WordIndex:
    """A text's word keys, their [start, end) offsets in the text, and where each key occurs."""

    def __init__(self, text: str):
        runs = list(_WORD_RUN.finditer(text))
        self.text = text
        self.keys = [word_key(m.group()) for m in runs]
        self.starts = [m.start() for m in runs]
        self.ends = [m.end() for m in runs]
        self.positions: dict[str, list[int]] = {}
        for i, key in enumerate(self.keys):
            self.positions.setdefault(key, []).append(i)

    def span(self, first: int, end: int) -> tuple[int, int]:
        """Text offsets of words [first, end), widened over the quotes, brackets and punctuation attached to
        the first word's start and the last word's end, and a call's `()` (never over whitespace or words)."""
        start, stop = self.starts[first], self.ends[end - 1]
        while start > 0 and self.text[start - 1] in _OPENING:
            start -= 1
        while stop < len(self.text) and (self.text[stop] in _CLOSING or self.text.startswith("()", stop)):
            stop += 2 if self.text.startswith("()", stop) else 1
        return start, stop


def max_word_edits(words: int, whole_quote: bool = False) -> int:
    """Word edits repair allows in one piece of `words` word keys.

    A piece of a `first<...>last` marker: none up to 2 words, 1 up to 5, 2 from 6 (the other pieces and their
    order pin the span as well). A whole quote (a marker without `<...>`): 1 per 6 words, at most 2, so a short
    quote with a wrong word ("impounds Lake Powell") is never taken for another text.
    """
    if whole_quote:
        return min(2, words // 6)
    return 0 if words <= 2 else 1 if words <= 5 else 2


@dataclass(frozen=True, order=True)
class _Alignment:
    """A piece aligned with document words [start, end): `cost` word edits, `matched` words equal."""

    end: int
    cost: int
    unmatched: int  # -matched, so that sorting prefers more matched words
    start: int

    @property
    def matched(self) -> int:
        return -self.unmatched


def align_piece(index: WordIndex, piece: list[str], budget: int) -> list[_Alignment] | None:
    """Every alignment of the word keys `piece` with the document using at most `budget` word edits
    (substitutions, insertions, deletions), whose first and last document words are matched piece words;
    None when the piece has more than `MAX_REPAIR_STARTS` candidate starts (common words only).

    Candidate starts come from the `budget + 1` rarest piece words: at most `budget` piece words go unmatched,
    so one of them is matched, at most `budget` words from where it stands in the piece.
    """
    n = len(piece)
    if n == 0:
        return []
    heads: dict[str, list[int]] = {}  # key -> piece indexes it can start at (the piece words before are deleted)
    for j in range(min(budget, n - 1) + 1):
        heads.setdefault(piece[j], []).append(j)
    rarest = sorted(range(n), key=lambda i: (len(index.positions.get(piece[i], ())), i))[: budget + 1]
    starts: set[int] = set()
    for i in rarest:
        for p in index.positions.get(piece[i], ()):
            for a in range(max(0, p - i - budget), min(len(index.keys), p - i + budget + 1)):
                if index.keys[a] in heads:
                    starts.add(a)
        if len(starts) > MAX_REPAIR_STARTS:
            return None
    best: dict[tuple[int, int], tuple[int, int]] = {}  # (start, end) -> (cost, -matched)
    for a in sorted(starts):
        for j in heads[index.keys[a]]:
            rest = piece[j + 1 :]
            window = index.keys[a + 1 : a + 1 + len(rest) + budget - j]
            for y, cost, matched in _interior_ends(rest, window, budget - j):
                key = (a, a + 1 + y)
                score = (j + cost, -(matched + 1))
                if key not in best or score < best[key]:
                    best[key] = score
    return sorted(_Alignment(end, cost, unmatched, start) for (start, end), (cost, unmatched) in best.items())


def _interior_ends(rest: list[str], window: list[str], budget: int) -> list[tuple[int, int, int]]:
    """(y, cost, matched) for aligning all of `rest` with window[:y], ending on a matched word (y = 0: `rest`
    deleted), within `budget` edits. Among equal costs the one with the most matched words."""
    r, w = len(rest), len(window)
    inf = (budget + 1, 0)
    # grid[x][y]: (edits, -matched) aligning rest[:x] with window[:y]
    grid = [[inf] * (w + 1) for _ in range(r + 1)]
    for x in range(r + 1):
        for y in range(max(0, x - budget), min(w, x + budget) + 1):
            if x == 0 or y == 0:
                grid[x][y] = (x + y, 0)
                continue
            up, left, diag = grid[x - 1][y], grid[x][y - 1], grid[x - 1][y - 1]
            options = [(up[0] + 1, up[1]), (left[0] + 1, left[1])]
            options.append((diag[0], diag[1] - 1) if rest[x - 1] == window[y - 1] else (diag[0] + 1, diag[1]))
            grid[x][y] = min(options)
    ends: list[tuple[int, int, int]] = []
    if r <= budget:
        ends.append((0, r, 0))
    for x in range(1, r + 1):
        for y in range(max(1, x - budget), min(w, x + budget) + 1):
            if rest[x - 1] != window[y - 1]:
                continue
            edits, unmatched = grid[x - 1][y - 1]
            cost = edits + r - x
            if cost <= budget:
                ends.append((y, cost, 1 - unmatched))
    return ends


def _nearest(alignments: list[_Alignment], start: int, end: int) -> _Alignment | None:
    """The first alignment (they are sorted by end) that ends at or after `end` and starts at or after `start`."""
    i = bisect_left(alignments, end, key=lambda a: a.end)
    while i < len(alignments) and alignments[i].start < start:
        i += 1
    return alignments[i] if i < len(alignments) else None


def repair_marker(doc: NormalizedText, pieces: list[str]) -> Located | str:
    """Resolve marker pieces that miss the document by case, quotes, punctuation, markup, spacing or a few words.

    The pieces and the document are compared as word keys (`word_keys`); each piece may take up to
    `max_word_edits` word edits. A candidate is a chain: an alignment of the first piece, then for each later
    piece the nearest alignment (smallest end) that starts at or after the previous one's start and ends at or
    after its end. Chains are tried with 0, 1, 2... edits in total; at the first total that yields any, those
    with the most matched words are kept, and their spans must hold one text (else `excerpt_ambiguous`).
    A piece of common words only (more than `MAX_REPAIR_STARTS` candidate places) is not repaired.
    """
    anchors = [word_keys(piece) for piece in pieces]
    if not all(anchors):
        return "excerpt_not_found"
    index = doc.words()
    whole_quote = len(pieces) == 1
    budgets = [max_word_edits(len(anchor), whole_quote) for anchor in anchors]
    alignments: list[list[_Alignment]] = []
    for anchor, budget in zip(anchors, budgets, strict=True):
        aligned = align_piece(index, anchor, budget)
        if aligned is None:
            return "excerpt_not_found"
        alignments.append(aligned)
    # Later pieces' alignments by cost, each sorted by end (then cost, matched words, start).
    by_cost = [[[a for a in aligned if a.cost == c] for c in range(budget + 1)]
               for aligned, budget in zip(alignments, budgets, strict=True)]
    for total in range(sum(budgets) + 1):
        chains: dict[tuple[int, int], int] = {}  # word span -> matched words
        for first in alignments[0]:
            if first.cost > total:
                continue
            start, end, spent, matched = first.start, first.end, first.cost, first.matched
            for groups in by_cost[1:]:
                step = min((a for a in (_nearest(group, start, end) for group in groups[: total - spent + 1])
                            if a is not None), default=None)
                if step is None:
                    break
                start, end, spent, matched = step.start, step.end, spent + step.cost, matched + step.matched
            else:
                span = (first.start, end)
                chains[span] = max(matched, chains.get(span, 0))
        if chains:
            most = max(chains.values())
            spans = {index.span(a, b) for (a, b), matched in chains.items() if matched == most}
            if len({normalize_ws(doc.original[s:e]) for s, e in spans}) > 1:
                return "excerpt_ambiguous"
            return Located(*min(spans), repaired=True)
    return "excerpt_not_found"


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
    count = repaired = 0
    for marker in EXCERPT.finditer(answer):
        count += 1
        free_pieces.append(len(pieces))
        pieces.append(answer[cursor : marker.start()])
        cursor = marker.end()
        located = locate_marker(doc, marker.group(1))
        if isinstance(located, str):
            unresolved.append((marker.group(0), located))
            pieces.append(marker.group(0))
            continue
        repaired += located.repaired
        span_text = doc.original[located.start : located.end]
        spans.append((located.start, located.end))
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
    return ExpandedAnswer(text, min(coverage, 1.0), count, spans, unresolved, excerpt_chars, copied_chars, repaired)


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
