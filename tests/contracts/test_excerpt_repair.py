"""Excerpt repair: markers that miss the document by case, quotes, punctuation, markup, spacing or a word or
two resolve when exactly one span fits; never when two do. Multi-piece markers resolve first..last in order."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineinstructions.contracts.excerpts import (
    NormalizedText,
    expand_excerpts,
    fold_case,
    locate_marker,
    max_word_edits,
    normalize_ws,
    resolve_marker,
    word_keys,
)

DOC = ('He said: “The Hoover Dam is a concrete arch-gravity dam,” in the Black Canyon of the Colorado River. '
       "It was constructed between 1931 and 1936 during the Great Depression. The dam impounds Lake Mead.")


def resolved(answer: str, doc: str = DOC) -> str:
    out = expand_excerpts(answer, doc)
    assert out.resolved, out.unresolved
    return out.text


def reason(answer: str, doc: str = DOC) -> str:
    out = expand_excerpts(answer, doc)
    assert not out.resolved, out.text
    return out.unresolved[0][1]


# -- examples -----------------------------------------------------------------------------------------------


def test_exact_markers_resolve_as_before_and_count_no_repair():
    out = expand_excerpts("<excerpt>It was constructed<...>Great Depression.</excerpt>", DOC)
    assert out.resolved and out.repaired_excerpts == 0
    assert out.text == "It was constructed between 1931 and 1936 during the Great Depression."
    assert resolve_marker(NormalizedText(DOC), "It was constructed<...>Great Depression.") == (
        DOC.index("It was"), DOC.index("Depression.") + len("Depression."))
    located = locate_marker(NormalizedText(DOC), "It was constructed<...>Great Depression.")
    assert not isinstance(located, str) and not located.repaired


def test_quotes_punctuation_and_case_are_repaired_to_the_document_span():
    out = expand_excerpts('Quote: <excerpt>"the hoover dam is<...>arch gravity dam"</excerpt>', DOC)
    assert out.resolved and out.repaired_excerpts == 1
    # The span takes in the quotes and punctuation around its first and last words, from the document.
    assert out.text == "Quote: “The Hoover Dam is a concrete arch-gravity dam,”"
    assert resolved("<excerpt>It was constructed, between<...>the great depression</excerpt>") == (
        "It was constructed between 1931 and 1936 during the Great Depression.")


def test_one_or_two_words_off_at_an_end_are_repaired():
    # A word dropped, a word added, a word changed (anchors of 3-5 words allow one edit, 6+ allow two).
    assert resolved("<excerpt>It was built between<...>during the Great Depression.</excerpt>").startswith(
        "It was constructed between 1931")
    assert resolved("<excerpt>It was constructed in between<...>the Great Depression.</excerpt>").startswith(
        "It was constructed between")
    assert resolved("<excerpt>It was constructed<...>during the great American depression</excerpt>").endswith(
        "during the Great Depression.")
    assert resolved("<excerpt>Then it was finally constructed between 1931<...>Great Depression</excerpt>").startswith(
        "It was constructed")
    # Three words off is too many for a 6-word end; two words are too few to change any.
    assert reason("<excerpt>Then it was really finally constructed between<...>Great Depression</excerpt>") == \
        "excerpt_not_found"
    assert reason("<excerpt>It was constructed<...>Great Recession</excerpt>") == "excerpt_not_found"


def test_a_short_quote_with_a_wrong_word_is_never_taken_for_another_text():
    assert reason("<excerpt>impounds Lake Powell</excerpt>") == "excerpt_not_found"
    assert resolved("<excerpt>the dam impounds lake mead</excerpt>") == "The dam impounds Lake Mead"  # case-blind
    long_quote = "It was constructed between 1931 and 1935 during the Great Depression"  # 12 words, one wrong
    assert resolved(f"<excerpt>{long_quote}</excerpt>") == (
        "It was constructed between 1931 and 1936 during the Great Depression.")


RST = """Installation
============

Install the package with ``pip``::

    $ pip install fineinstructions

Then call ``fineinstructions.run()`` from your code:

.. code-block:: python

    import fineinstructions
    fineinstructions.run()

**Note:** the *first* run downloads the model.
"""


def test_rst_and_markdown_ends_written_without_markup_are_repaired():
    assert resolved("<excerpt>Install the package with pip:<...>$ pip install fineinstructions</excerpt>", RST) == (
        "Install the package with ``pip``::\n\n    $ pip install fineinstructions")
    assert resolved("<excerpt>Then call fineinstructions.run() from<...>fineinstructions.run()</excerpt>", RST) == (
        RST[RST.index("Then call") : RST.rindex("run()") + len("run()")])
    assert resolved("<excerpt>Note: the first run downloads the model.</excerpt>", RST) == (
        "**Note:** the *first* run downloads the model.")


def test_two_fitting_spans_are_ambiguous_never_guessed():
    doc = "The old mill stood by the river. The old barn stood by the road. Both were sold in 1990."
    # "The old house stood" is one word off both "The old mill stood" and "The old barn stood".
    assert reason("<excerpt>The old house stood<...>sold in 1990.</excerpt>", doc) == "excerpt_ambiguous"
    # With one of them gone, the same marker is repaired.
    single = doc.replace("The old barn stood by the road. ", "")
    assert resolved("<excerpt>The old house stood<...>sold in 1990.</excerpt>", single) == single
    # The exact-match rule is unchanged: equal anchors in two places stay ambiguous.
    assert reason("<excerpt>the old<...>in 1990</excerpt>", doc) == "excerpt_ambiguous"


def test_the_fewest_edits_win_before_ambiguity_is_judged():
    doc = "Red fox runs fast here. Red cat runs fast there. The end of the story."
    assert resolved("<excerpt>red fox runs fast<...>the story</excerpt>", doc) == doc[:-1]  # case-blind, exact
    assert resolved("<excerpt>Red, fox runs quickly<...>story.</excerpt>", doc) == doc  # 1 edit vs 2 edits


def test_multi_piece_markers_resolve_first_to_last_in_order():
    text = resolved("<excerpt>He said<...>Black Canyon<...>during the Great Depression.</excerpt>")
    assert text == DOC[: DOC.index("Depression.") + len("Depression.")]
    assert resolved("<excerpt>It was<...>1931<...>1936<...>Lake Mead.</excerpt>") == DOC[DOC.index("It was") :]
    assert reason("<excerpt>It was<...>1936<...>1931<...>Lake Mead.</excerpt>") == "excerpt_not_found"
    assert reason("<excerpt>It was<...><...>Lake Mead.</excerpt>") == "excerpt_empty"
    # Pieces may be repaired too.
    assert resolved("<excerpt>he SAID:<...>“black canyon”<...>great depression</excerpt>") == text


def test_repairs_are_counted_per_marker():
    answer = ("<excerpt>It was constructed<...>Great Depression.</excerpt> and "
              '<excerpt>the dam impounds lake mead</excerpt> <excerpt>"the hoover dam<...>gravity dam</excerpt>')
    out = expand_excerpts(answer, DOC)
    assert out.resolved and out.excerpts == 3 and out.repaired_excerpts == 1


def test_markers_without_words_are_not_repaired():
    assert reason("<excerpt>...<...>!!</excerpt>") == "excerpt_not_found"


@pytest.mark.parametrize(("words", "whole_quote", "edits"), [
    (1, False, 0), (2, False, 0), (3, False, 1), (5, False, 1), (6, False, 2), (20, False, 2),
    (5, True, 0), (6, True, 1), (11, True, 1), (12, True, 2), (40, True, 2),
])
def test_edit_budget(words, whole_quote, edits):
    assert max_word_edits(words, whole_quote) == edits


def test_word_keys_ignore_case_accents_quotes_and_markup():
    assert word_keys("``Café``:: “It’s” **BOLD** x_y") == ["cafe", "it", "s", "bold", "x", "y"]


# -- properties ---------------------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(60)]
OPENING = ["", "", "", "“", '"', "(", "``", "'", "*"]
CLOSING = ["", "", "", ",", ".", "”", '"', ")", "``", "::", ":", ";", "*"]
SEPARATORS = st.sampled_from([" ", "  ", "\n", "\t", " \n ", "\n\n    "])
QUOTE_SWAPS = str.maketrans({"“": '"', "”": '"', '"': "“", "'": "’"})


@st.composite
def decorated_document(draw, min_words: int = 8):
    """Unique words with quotes, brackets and markup around some, varied whitespace; the chunks and their offsets."""
    words = draw(st.permutations(WORDS))[: draw(st.integers(min_words, 60))]
    chunks = [draw(st.sampled_from(OPENING)) + w + draw(st.sampled_from(CLOSING)) for w in words]
    seps = [draw(SEPARATORS) for _ in chunks]
    doc, offsets = "", []
    for chunk, sep in zip(chunks, seps, strict=True):
        offsets.append((len(doc), len(doc) + len(chunk)))
        doc += chunk + sep
    return doc, words, chunks, offsets


@st.composite
def perturbed(draw, chunks: list[str]) -> str:
    """The chunks as a model might copy them: case changed, quotes swapped, punctuation dropped or added."""
    out = []
    for chunk in chunks:
        if draw(st.booleans()):
            chunk = chunk.upper() if draw(st.booleans()) else chunk.title()
        choice = draw(st.sampled_from(["keep", "swap", "strip", "add"]))
        if choice == "swap":
            chunk = chunk.translate(QUOTE_SWAPS)
        elif choice == "strip":
            chunk = re.sub(r"[^\w]", "", chunk)
        elif choice == "add":
            chunk = draw(st.sampled_from(['"', "“", "'", ""])) + chunk + draw(st.sampled_from([",", ".", "”", "::"]))
        out.append(chunk)
    return draw(SEPARATORS).join(out)


@st.composite
def marker_case(draw):
    doc, words, chunks, offsets = draw(decorated_document())
    i = draw(st.integers(0, len(words) - 2))
    j = draw(st.integers(i + 2, len(words)))
    k = draw(st.integers(1, 4))
    return doc, words, chunks, offsets, i, j, k


def only_punctuation(text: str) -> bool:
    return not any(c.isalnum() for c in text)


@settings(max_examples=150, deadline=None)
@given(marker_case())
def test_a_marker_from_the_exact_first_and_last_words_resolves_to_that_span(case):
    doc, _, chunks, offsets, i, j, k = case
    first, last = " ".join(chunks[i : min(i + k, j)]), " ".join(chunks[max(j - k, i) : j])
    out = expand_excerpts(f"<excerpt>{first}<...>{last}</excerpt>", doc)
    assert out.resolved and out.repaired_excerpts == 0
    assert out.spans == [(offsets[i][0], offsets[j - 1][1])]


@settings(max_examples=200, deadline=None)
@given(marker_case(), st.data())
def test_perturbed_ends_resolve_to_the_same_span(case, data):
    doc, words, chunks, offsets, i, j, k = case
    first = data.draw(perturbed(chunks[i : min(i + k, j)]))
    last = data.draw(perturbed(chunks[max(j - k, i) : j]))
    out = expand_excerpts(f"<excerpt>{first}<...>{last}</excerpt>", doc)
    assert out.resolved, (first, last, out.unresolved)
    (start, end), = out.spans
    exact_start, exact_end = offsets[i][0], offsets[j - 1][1]
    # The same words; at most the quotes or punctuation around its ends differ (when the document's own words,
    # without them, matched exactly).
    assert word_keys(doc[start:end]) == words[i:j]
    assert exact_start <= start and end <= exact_end
    assert only_punctuation(doc[exact_start:start]) and only_punctuation(doc[end:exact_end])
    if out.repaired_excerpts:
        assert (start, end) == (exact_start, exact_end)  # a repaired span takes in its ends' punctuation


@settings(max_examples=150, deadline=None)
@given(marker_case(), st.data())
def test_a_perturbed_whole_quote_resolves_to_its_span(case, data):
    doc, words, chunks, offsets, i, j, _ = case
    quote = data.draw(perturbed(chunks[i:j]))
    out = expand_excerpts(f"<excerpt>{quote}</excerpt>", doc)
    assert out.resolved, (quote, out.unresolved)
    (start, end), = out.spans
    assert word_keys(doc[start:end]) == words[i:j]


@st.composite
def duplicated_first_words(draw):
    """A document where the marker's first words occur twice before its last words: two spans fit."""
    words = draw(st.permutations(WORDS))[: draw(st.integers(10, 60))]
    i = draw(st.integers(1, len(words) - 4))
    a = draw(st.integers(1, 3))
    b = draw(st.integers(1, 3))
    j = draw(st.integers(min(i + a + b, len(words)), len(words)))
    a = min(a, j - i - 1)
    first, last = words[i : i + a], words[j - b if j - b >= i + a else i + a : j]
    p = draw(st.integers(0, i - 1))
    doc_words = words[:p] + first + words[p:]
    seps = [draw(SEPARATORS) for _ in doc_words]
    doc = "".join(w + s for w, s in zip(doc_words, seps, strict=True))
    return doc, first, last


@settings(max_examples=150, deadline=None)
@given(duplicated_first_words(), st.data())
def test_when_two_spans_fit_the_marker_is_unresolved(case, data):
    doc, first, last = case
    for marker in (f"{' '.join(first)}<...>{' '.join(last)}",
                   f"{data.draw(perturbed(first))}<...>{data.draw(perturbed(last))}"):
        out = expand_excerpts(f"<excerpt>{marker}</excerpt>", doc)
        assert not out.resolved, (marker, out.text)
        assert "ambiguous" in out.unresolved[0][1]


@settings(max_examples=150, deadline=None)
@given(st.permutations(WORDS), st.integers(0, 20), st.integers(0, 20), st.sampled_from(["x1", "x2"]))
def test_a_word_off_that_fits_two_places_is_ambiguous_and_one_place_is_repaired(words, gap1, gap2, wrong):
    # "A B C1 ... A B C2 ... L1 L2", marker "A B <wrong><...>L1 L2": one edit fits both; with one copy, one fits.
    a, b, c1, c2, l1, l2, *rest = words
    both = [a, b, c1, *rest[:gap1], a, b, c2, *rest[gap1 : gap1 + gap2], l1, l2, *rest[gap1 + gap2 :]]
    marker = f"<excerpt>{a} {b} {wrong}<...>{l1} {l2}</excerpt>"
    assert expand_excerpts(marker, " ".join(both)).unresolved[0][1] == "excerpt_ambiguous"
    one = [a, b, c1, *rest[:gap1], l1, l2, *rest[gap1:]]
    out = expand_excerpts(marker, " ".join(one))
    assert out.resolved and out.repaired_excerpts == 1
    assert out.text == " ".join([a, b, c1, *rest[:gap1], l1, l2])


@st.composite
def three_pieces(draw):
    doc, words, chunks, offsets = draw(decorated_document(min_words=12))
    sizes = [draw(st.integers(1, 3)) for _ in range(3)]
    gaps = [draw(st.integers(0, 3)) for _ in range(4)]
    if sum(sizes) + sum(gaps) > len(words):
        gaps = [0, 0, 0, 0]
    i = gaps[0]
    m = i + sizes[0] + gaps[1]
    j = m + sizes[1] + gaps[2] + sizes[2]
    return doc, words, chunks, offsets, [(i, i + sizes[0]), (m, m + sizes[1]), (j - sizes[2], j)]


@settings(max_examples=150, deadline=None)
@given(three_pieces(), st.data())
def test_pieces_in_order_resolve_first_to_last_and_out_of_order_do_not(case, data):
    doc, words, chunks, offsets, pieces = case
    texts = [" ".join(chunks[s:e]) for s, e in pieces]
    span = (offsets[pieces[0][0]][0], offsets[pieces[-1][1] - 1][1])
    out = expand_excerpts("<excerpt>" + "<...>".join(texts) + "</excerpt>", doc)
    assert out.resolved and out.spans == [span] and out.repaired_excerpts == 0
    loose = [data.draw(perturbed(chunks[s:e])) for s, e in pieces]
    out = expand_excerpts("<excerpt>" + "<...>".join(loose) + "</excerpt>", doc)
    assert out.resolved, (loose, out.unresolved)
    assert word_keys(out.text) == words[pieces[0][0] : pieces[-1][1]]
    for order in ([0, 2, 1], [1, 0, 2], [2, 1, 0]):
        out = expand_excerpts("<excerpt>" + "<...>".join(loose[k] for k in order) + "</excerpt>", doc)
        assert not out.resolved and out.unresolved[0][1] == "excerpt_not_found"


# The resolver as it was before repair (two pieces at most, exact up to whitespace, then blind to case): every
# marker it resolved must resolve to the same span, and every marker it called ambiguous stays ambiguous.


def previous_resolver(doc: NormalizedText, body: str) -> tuple[int, int] | str:
    parts = re.split(r"<\s*(?:\.\.\.|…)\s*>", body)
    if len(parts) > 2:
        return "excerpt_malformed"
    first = normalize_ws(parts[0])
    last = normalize_ws(parts[-1]) if len(parts) == 2 else None
    if not first or (last is not None and not last):
        return "excerpt_empty"
    located = previous_locate(doc, first, last)
    if located == "excerpt_not_found":
        located = previous_locate(doc.folded(), fold_case(first), fold_case(last) if last is not None else None)
    return located


def previous_locate(doc: NormalizedText, first: str, last: str | None) -> tuple[int, int] | str:
    candidates: set[tuple[int, int]] = set()
    for start in doc.find_all(first, end_boundary=True):
        if last is None:
            candidates.add((start, start + len(first)))
            continue
        end_of_first = start + len(first)
        probe = doc.text.find(last, max(start, end_of_first - len(last)))
        while probe != -1 and (probe + len(last) < end_of_first or not doc.word_boundary(probe)
                               or not doc.word_boundary(probe + len(last))):
            probe = doc.text.find(last, probe + 1)
        if probe != -1:
            candidates.add((start, probe + len(last)))
    if not candidates:
        return "excerpt_not_found"
    if len({doc.text[s:e] for s, e in candidates}) > 1:
        return "excerpt_ambiguous"
    start, end = min(candidates)
    return doc.original_span(start, end)


SMALL = ["the", "The", "cat", "sat", "on", "mat.", "mat", "dog,", "Dog", "ran"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SMALL), min_size=3, max_size=30), st.data())
def test_what_resolved_before_resolves_to_the_same_span(doc_words, data):
    doc = NormalizedText(" ".join(doc_words))
    first = " ".join(data.draw(st.lists(st.sampled_from(SMALL), min_size=1, max_size=3)))
    last = " ".join(data.draw(st.lists(st.sampled_from(SMALL), min_size=1, max_size=3)))
    body = data.draw(st.sampled_from([first, f"{first}<...>{last}"]))
    before = previous_resolver(doc, body)
    now = locate_marker(doc, body)
    if isinstance(before, tuple):
        assert not isinstance(now, str) and (now.start, now.end) == before and not now.repaired
    elif before == "excerpt_ambiguous":
        assert now == "excerpt_ambiguous"
    else:
        assert before == "excerpt_not_found"
        assert now in ("excerpt_not_found", "excerpt_ambiguous") or (not isinstance(now, str) and now.repaired)
