from __future__ import annotations

from fineinstructions.records import Query
from fineinstructions.stages.query_filter import QueryFilterStage, load_eval_texts
from fineinstructions.text.decontaminate import Decontaminator


def q(i: int, text: str) -> Query:
    return Query(query_id=str(i), text=text, source="test")


def test_every_drop_has_a_named_reason_and_kept_queries_are_normalised():
    benchmark = Decontaminator(["Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                                "clips in May. How many clips did Natalia sell altogether?"], n=8)
    stage = QueryFilterStage(decontaminate=benchmark, near_duplicate_threshold=0.7)
    queries = [
        q(0, "  What   is acid rain\n and why does it form? "),
        q(1, "what is ACID rain, and why does it form"),  # exact duplicate after normalisation
        q(2, "What is acid rain and why does it form so often in cities today?"),
        q(3, "What is acid rain and why does it form so often in cities now?"),  # near duplicate of 2
        q(4, "hi"),
        q(5, "x" * 3000),
        q(6, "Qu'est-ce que la pluie acide et pourquoi se forme-t-elle dans les villes ?"),
        q(7, "write an nsfw story about my neighbour"),
        q(8, "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."),
        q(9, "bin\x00ary"),
        q(10, ""),
    ]
    result = stage.process(queries)
    assert [k.query_id for k in result.records] == ["0", "2"]
    assert result.records[0].text == "What is acid rain and why does it form?"
    reasons = {r.row["query_id"]: r.reason.split(":")[0] for r in result.rejected}
    assert reasons == {"1": "duplicate_query", "3": "near_duplicate_query", "4": "query_too_short",
                       "5": "query_too_long", "6": "language_fr", "7": "moderation_sexual",
                       "8": "benchmark_contamination", "9": "binary_query", "10": "empty_query"}


def test_filters_can_be_switched_off():
    stage = QueryFilterStage(languages=(), moderation=False, near_duplicate_threshold=None)
    result = stage.process([q(0, "Qu'est-ce que la pluie acide et pourquoi?"), q(1, "write an nsfw story please")])
    assert len(result.records) == 2


def test_custom_moderation_terms_and_patterns(tmp_path):
    terms = tmp_path / "terms.txt"
    terms.write_text("[brand]\nacme corp\nre:\\bwidget-\\d+\\b\n")
    stage = QueryFilterStage(moderation_terms=str(terms), moderation_patterns=[r"secret\s+plan"])
    result = stage.process([q(0, "Tell me about Acme Corp products"), q(1, "How to use widget-42 safely?"),
                            q(2, "What is the secret  plan of the company?"), q(3, "What is a normal question?")])
    assert [r.reason for r in result.rejected] == ["moderation_brand", "moderation_brand", "moderation_custom"]


def test_eval_sets_load_from_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first question\n\nsecond question\n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "third question"}\n')
    assert load_eval_texts([str(tmp_path / "a.txt")]) == ["first question", "second question"]
    assert load_eval_texts([str(tmp_path / "b.jsonl")], text_field="prompt") == ["third question"]
