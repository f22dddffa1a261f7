from __future__ import annotations

from fineinstructions.text.decontaminate import Decontaminator
from fineinstructions.text.dedup import NearDuplicateIndex, shingles
from fineinstructions.text.language import LanguageFilter
from fineinstructions.text.moderation import ModerationFilter, load_rules
from fineinstructions.text.normalize import dedup_key, looks_binary, normalize_text


def test_normalisation():
    assert normalize_text("Ｆｕｌｌ\u200bwidth\n\ttext  ") == "Fullwidth text"
    assert dedup_key("What's   THIS?!") == dedup_key("whats this")
    assert looks_binary("abc\x00def") and not looks_binary("plain text")


def test_near_duplicates_are_found_and_distinct_texts_are_not():
    index = NearDuplicateIndex(threshold=0.6)
    assert index.check_and_add("a", "how do I bake sourdough bread at home without a starter") is None
    assert index.check_and_add("b", "how do I bake sourdough bread at home without any starter") == "a"
    assert index.check_and_add("c", "what is the tallest mountain in the world") is None
    assert shingles("one two", 3) == {"one two"}


def test_language_filter():
    english = LanguageFilter(["en"])
    assert english.rejects("What is the best way to learn linear algebra quickly?") is None
    assert english.rejects("Wie kann ich am schnellsten lineare Algebra lernen?") == "language_de"
    assert english.rejects("hello there") is None  # too short to judge, plain ASCII
    assert LanguageFilter(["de"]).rejects("Wie kann ich am schnellsten lineare Algebra lernen?") is None
    assert LanguageFilter([]).rejects("Wie kann ich am schnellsten lineare Algebra lernen?") is None


def test_moderation_rules_and_word_boundaries():
    rules = load_rules("# comment\n[x]\nbad word\nre:\\d{3}-\\d{4}\n")
    assert [c for c, _ in rules] == ["x", "x"]
    default = ModerationFilter()
    assert default.rejects("Tell me a story with explicit sex") == "moderation_sexual"
    assert default.rejects("Is pornography regulation effective?") == "moderation_sexual"  # a documented limit
    assert default.rejects("What is the Essex coastline like?") is None  # no match inside words
    assert default.rejects("My SSN is 123-45-6789, is that safe?") == "moderation_personal_data"


def test_decontamination_by_ngram_and_short_exact_match():
    eval_set = Decontaminator(["Janet's ducks lay 16 eggs per day and she eats three for breakfast every morning",
                               "What is 2 + 2?"], n=6)
    assert eval_set.contaminated("Q: janet's ducks lay 16 eggs per day and she eats three. Solve.")
    assert eval_set.contaminated("What is 2 + 2?")
    assert not eval_set.contaminated("How many eggs do ducks lay per week in winter?")
