from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fineinstructions.contracts.excerpts import expand_excerpts, verbatim_copy_chars

DOC = (
    "The Hoover Dam is a concrete arch-gravity dam in the Black Canyon of the Colorado River.\n"
    "It was constructed between 1931 and 1936 during the Great Depression.  The dam impounds Lake Mead."
)


def test_marker_expands_to_exact_span_and_counts_coverage():
    answer = "<excerpt>The Hoover Dam<...>Colorado River.</excerpt>"
    out = expand_excerpts(answer, DOC)
    assert out.resolved
    assert out.text == "The Hoover Dam is a concrete arch-gravity dam in the Black Canyon of the Colorado River."
    assert out.coverage == 1.0
    assert out.excerpts == 1


def test_connecting_text_lowers_coverage():
    answer = "Built in the 1930s: <excerpt>It was constructed<...>Great Depression.</excerpt>"
    out = expand_excerpts(answer, DOC)
    assert out.resolved
    assert out.text.startswith("Built in the 1930s: It was constructed between 1931")
    assert 0.6 < out.coverage < 1.0


def test_whitespace_differences_are_tolerated_and_original_text_is_copied():
    answer = "<excerpt>Colorado   River. It\twas<...>Depression. The   dam</excerpt>"
    out = expand_excerpts(answer, DOC)
    assert out.resolved
    assert out.text == "Colorado River.\nIt was constructed between 1931 and 1936 during the Great Depression.  The dam"


def test_missing_marker_is_unresolved_never_guessed():
    out = expand_excerpts("<excerpt>The Eiffel Tower<...>in Paris.</excerpt>", DOC)
    assert not out.resolved
    assert out.unresolved[0][1] == "excerpt_not_found"
    assert "<excerpt>" in out.text


def test_ambiguous_marker_is_unresolved():
    doc = "The cat sat on the mat. The cat ran to the door."
    out = expand_excerpts("<excerpt>The cat<...>the</excerpt>", doc)
    assert out.unresolved and out.unresolved[0][1] == "excerpt_ambiguous"


def test_repeated_identical_text_is_not_ambiguous():
    doc = "Ha ha ha. Then silence. Ha ha ha."
    out = expand_excerpts("<excerpt>Ha ha ha.</excerpt>", doc)
    assert out.resolved and out.text == "Ha ha ha."


def test_quote_without_ellipsis_must_be_verbatim():
    assert expand_excerpts("<excerpt>impounds Lake Mead</excerpt>", DOC).resolved
    assert not expand_excerpts("<excerpt>impounds Lake Powell</excerpt>", DOC).resolved


def test_broken_tags_are_reported():
    out = expand_excerpts("<excerpt>The Hoover Dam<...>Colorado River.", DOC)
    assert not out.resolved
    assert out.unresolved[-1][1] == "excerpt_broken_tags"


def test_overlapping_first_and_last_words():
    out = expand_excerpts("<excerpt>The dam impounds<...>impounds Lake Mead.</excerpt>", DOC)
    assert out.resolved and out.text == "The dam impounds Lake Mead."


def test_unicode_ellipsis_is_accepted():
    out = expand_excerpts("<excerpt>The dam impounds<…>Lake Mead.</excerpt>", DOC)
    assert out.resolved


def test_verbatim_copies_of_enough_words_count_as_coverage():
    written_out = "It was constructed between 1931 and 1936 during the Great Depression."
    out = expand_excerpts(written_out, DOC)
    assert out.excerpts == 0 and out.copied_chars == len(written_out) and out.coverage == 1.0
    assert expand_excerpts(written_out, DOC, min_copy_words=0).coverage == 0.0
    # A paraphrase shares no 6-word run with the document.
    assert expand_excerpts("They built it from 1931 to 1936, in the Great Depression.", DOC).coverage == 0.0


def test_copies_and_markers_add_up_and_short_copies_do_not_count():
    answer = "<excerpt>The Hoover Dam<...>Colorado River.</excerpt> Also, the Great Depression."
    out = expand_excerpts(answer, DOC)
    assert out.copied_chars == 0  # "the Great Depression." is 3 words, under 6
    assert out.excerpt_chars == len(DOC.split("\n")[0])
    mixed = expand_excerpts("Yes. It was constructed between 1931 and 1936, then it impounded Lake Mead.", DOC)
    assert mixed.copied_chars == len("It was constructed between 1931 and")  # "1936," is not "1936": the run ends
    run = expand_excerpts("Yes: constructed between 1931 and 1936 during the Great Depression, it was.", DOC)
    assert run.copied_chars == len("constructed between 1931 and 1936 during the Great")  # "Depression," differs


def test_no_markers_means_zero_coverage():
    out = expand_excerpts("  A plain answer.  ", DOC)
    assert out.resolved and out.coverage == 0.0 and out.text == "A plain answer."


# -- properties -------------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(60)]
SEPARATORS = st.sampled_from([" ", "  ", "\n", "\t", " \n "])


@st.composite
def document_and_span(draw):
    """A document of unique words with varied whitespace, and a span of at least 2 words."""
    words = draw(st.permutations(WORDS))[: draw(st.integers(8, 60))]
    seps = [draw(SEPARATORS) for _ in words]
    doc = "".join(w + s for w, s in zip(words, seps, strict=True)).strip()
    i = draw(st.integers(0, len(words) - 2))
    j = draw(st.integers(i + 2, len(words)))
    k = draw(st.integers(1, 3))
    return doc, words, i, j, k


@given(document_and_span())
def test_marker_from_span_edges_resolves_to_that_span(case):
    doc, words, i, j, k = case
    first = " ".join(words[i : min(i + k, j)])
    last = " ".join(words[max(j - k, i) : j])
    out = expand_excerpts(f"<excerpt>{first}<...>{last}</excerpt>", doc)
    assert out.resolved
    assert out.text.split() == words[i:j]
    assert out.text in doc  # copied from the original text, whitespace included
    assert out.coverage == 1.0


@given(document_and_span(), st.text(alphabet="abc ,.", max_size=20))
def test_coverage_is_a_fraction_and_spans_are_document_substrings(case, glue):
    doc, words, i, j, _ = case
    answer = f"{glue}<excerpt>{words[i]}<...>{words[j - 1]}</excerpt>{glue}"
    out = expand_excerpts(answer, doc)
    assert 0.0 <= out.coverage <= 1.0
    for start, end in out.spans:
        assert doc[start:end].split() == words[i:j]


@given(st.text(max_size=200))
def test_text_without_markers_is_unchanged(text):
    out = expand_excerpts(text.replace("<excerpt>", "").replace("</excerpt>", ""), "some document")
    assert out.excerpts == 0 and out.coverage == 0.0


def test_case_blind_retry_only_when_exact_match_fails():
    doc = "In meteorology, precipitation is any product of condensation that falls from clouds. Precipitation is rain."
    out = expand_excerpts("<excerpt>Precipitation is any product<...>from clouds.</excerpt>", doc)
    assert out.resolved and out.text == "precipitation is any product of condensation that falls from clouds."
    exact = expand_excerpts("<excerpt>Precipitation is rain.</excerpt>", doc)
    assert exact.resolved and exact.text == "Precipitation is rain."
    assert expand_excerpts("<excerpt>PRECIPITATION IS<...>rain.</excerpt>", doc).unresolved[0][1] == \
        "excerpt_ambiguous"


@given(document_and_span(), st.integers(2, 6), st.lists(st.sampled_from(["alpha", "beta", "x1", "y2"]), max_size=5))
def test_written_out_span_counts_fully_and_foreign_words_never(case, min_words, noise):
    doc, words, i, j, _ = case
    copy = " ".join(words[i:j])
    answer = " ".join([*noise, copy, *noise])
    copied = verbatim_copy_chars(answer, doc, min_words)
    assert copied == (len(copy) if j - i >= min_words else 0)
    assert verbatim_copy_chars(" ".join(noise), doc, min_words) == 0


@given(document_and_span(), SEPARATORS)
def test_whitespace_inside_a_marker_never_changes_its_span(case, sep):
    doc, words, i, j, k = case
    first = sep.join(words[i : min(i + k, j)])
    last = sep.join(words[max(j - k, i) : j])
    plain = expand_excerpts(f"<excerpt>{first.split()[0]}<...>{words[j - 1]}</excerpt>", doc)
    spaced = expand_excerpts(f"<excerpt>{sep}{first}{sep}<...>{sep}{last}</excerpt>", doc)
    assert plain.spans == spaced.spans
