"""The baseline recipes (wrap, nemotron_qa, ipt): chunking by tokens, each reply parsed with named rejections,
the training text in each recipe's layout with its token counts; and all three with a real engine."""

from __future__ import annotations

import pytest

import fineinstructions as fi
from fineinstructions.backends.base import Conversation
from fineinstructions.backends.fake import FakeBackend
from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.records import Document
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.ipt import IPTStage, ipt_layout, parse_tagged_pairs
from fineinstructions.stages.nemotron_qa import NemotronQAStage, parse_qa_pairs
from fineinstructions.stages.recipes import token_chunks
from fineinstructions.stages.wrap import WrapStage

TEXT = ("The Orrin bridge opened in 1902. It carried a tramway until 1950. The tramway was replaced by buses. "
        "A flood damaged the bridge in 1968. It was rebuilt two years later with a wider deck.")


def doc(i: int = 0, text: str = TEXT) -> Document:
    return Document(document_id=f"d{i}", text=text)


def words(texts):
    return [len(t.split()) for t in texts]


def test_token_chunks_stay_within_the_budget_and_keep_every_word():
    long = TEXT + " " + " ".join(f"w{i}" for i in range(50)) + "."
    chunks = token_chunks([doc(0, long), doc(1)], words, max_tokens=12)
    assert all(c.tokens <= 13 for c in chunks)  # a cut sentence's share is estimated pro rata
    for i, text in ((0, long), (1, TEXT)):
        mine = [c for c in chunks if c.document.document_id == f"d{i}"]
        assert [c.index for c in mine] == list(range(len(mine)))
        assert " ".join(c.text for c in mine).split() == text.split()
    assert len(token_chunks([doc()], words, max_tokens=1000)) == 1
    assert [c.index for c in token_chunks([doc(0, long)], words, 12, max_chunks=2)] == [0, 1]


def test_wrap_rephrases_each_chunk_in_turning_styles_and_names_its_rejections():
    def respond(conversation: Conversation) -> str:
        passage = conversation[-1]["content"].split("Passage:\n", 1)[1]
        if "tramway" in passage and "Question:" in conversation[0]["content"]:
            return "Here is the rewritten passage:\nQuestion: What did it carry?\nAnswer: A tramway until 1950."
        if "flood" in passage:
            return passage  # copied back
        return "Here is the rewritten passage:\n" + passage.replace("opened", "was opened to traffic")

    stage = WrapStage(FakeBackend(respond), styles=("medium", "qa"), chunk_tokens=12, min_length_ratio=0.3)
    result = stage.run_batch([doc(i) for i in range(4)], StageStats())
    styles = {(r.document_id, r.chunk): r.style for r in result.records}
    for i in range(4):
        chunk_styles = [stage.style(c) for c in token_chunks([doc(i)], words, 12)]
        assert len(set(chunk_styles[:2])) == 2  # neighbouring chunks take the two styles in turn
    assert {r.reason for r in result.rejected} <= {"not_rephrased", "no_questions"}
    assert any(r.reason == "not_rephrased" for r in result.rejected)
    for record in result.records:
        assert not record.text.startswith("Here is")
        assert record.token_count == len(record.text.split()) and record.source_token_count > 0
        assert record.recipe == "wrap" and record.prompt_version.startswith("wrap-")
        if styles[(record.document_id, record.chunk)] == "qa":
            assert record.items == 1 and "Question:" in record.text
    assert result.counters["lead_in_removed"] >= 1


def test_wrap_drops_short_and_truncated_rephrasings():
    short = WrapStage(FakeBackend(lambda c: "A bridge."), styles=("medium",), chunk_tokens=1000)
    assert [r.reason for r in short.process([doc()]).rejected] == ["too_short"]
    backend = FakeBackend(lambda c: "x " * 40)
    backend_generate = backend.generate

    def truncated(conversations, sampling):
        return [g.__class__(g.text, g.prompt_tokens, g.completion_tokens, "length") for g in
                backend_generate(conversations, sampling)]

    backend.generate = truncated  # type: ignore[method-assign]
    cut = WrapStage(backend, styles=("medium",), chunk_tokens=1000)
    assert [r.reason for r in cut.process([doc()]).rejected] == ["truncated_output"]


@pytest.mark.parametrize(("reply", "truncated", "expected"), [
    ("Here are the questions and answers:\n- Question: Who? Answer: Me.\n- Question: When?\nAnswer: Now.", False,
     ["Question: Who? Answer: Me.", "Question: When? Answer: Now."]),
    ("Question: A? Answer: a.\nQuestion: B? Answer: b.\nQuestion: C? Ans", True,
     ["Question: A? Answer: a.", "Question: B? Answer: b."]),
    ("Question: A? Answer: a.\nQuestion: A? Answer: a.\nQuestion: no answer here", False, ["Question: A? Answer: a."]),
    ("The text is about a bridge.\nQuestion: A? Answer: a.", False, "text_before_questions"),
    ("I cannot write questions about this.", False, "text_before_questions"),
    ("Question: A?\nQuestion: B?", False, "no_pairs"),
])
def test_nemotron_qa_replies_parse_as_nemo_curator_reads_them(reply, truncated, expected):
    parsed = parse_qa_pairs(reply, truncated)
    assert (parsed if isinstance(parsed, str) else parsed[0]) == expected


def test_nemotron_qa_appends_k_seeded_pairs_to_the_whole_document():
    reply = "\n".join(f"Question: Q{i}? Answer: A{i}." for i in range(8))
    stage = NemotronQAStage(FakeBackend(lambda c: reply), segment_tokens=15, max_pairs=10, seed=3)
    docs = [doc(i) for i in range(6)]
    result = stage.run_batch(docs, StageStats())
    again = NemotronQAStage(FakeBackend(lambda c: reply), segment_tokens=15, max_pairs=10, seed=3).process(docs)
    assert [r.text for r in result.records] == [r.text for r in again.records]  # seeded: the same on a rerun
    assert len(result.records) == 6
    for record in result.records:
        assert record.text.startswith(TEXT + "\n\n") and record.source_text == TEXT
        pairs = record.text[len(TEXT) + 2 :].split("\n\n")
        assert len(pairs) == record.items and 1 <= record.items <= 8
        assert len(set(pairs)) == len(pairs) and all(p.startswith("Question: Q") for p in pairs)
        assert record.source_token_count == len(TEXT.split())
    assert len({r.items for r in result.records}) > 1  # k is drawn per document


@pytest.mark.parametrize(("reply", "pairs", "dropped"), [
    ("<QUE> Why? <ANS> Because. </END>\n<QUE> How? <ANS> So. </END>", [("Why?", "Because."), ("How?", "So.")], 0),
    ("<QUE> Why? <ANS> Because. </END>\n<QUE> How? <ANS> So, and th", [("Why?", "Because.")], 0),
    ("<QUE> Why? <ANS> Because. </END><QUE> why? <ANS> Again. </END>", [("Why?", "Because.")], 1),
    ("<QUE> Why? </END><QUE> <ANS> x </END>junk <ANS> y </END>", [], 3),
])
def test_ipt_tagged_items_parse_as_the_synthesizer_output_is_read(reply, pairs, dropped):
    assert parse_tagged_pairs(reply) == (pairs, dropped)


def test_ipt_writes_the_text_then_its_pairs_in_a_seeded_layout():
    reply = "<QUE> When did it open? <ANS> In 1902. </END>\n<QUE> What replaced the tramway? <ANS> Buses. </END>"
    stage = IPTStage(FakeBackend(lambda c: reply), seed=1)
    result = stage.run_batch([doc(i) for i in range(8)], StageStats())
    assert len(result.records) == 8 and not result.rejected
    layouts = {r.text.replace(TEXT, "TEXT") for r in result.records}
    assert len(layouts) > 1  # the layout varies with the document
    for record in result.records:
        assert TEXT in record.text and record.items == 2 and "When did it open?" in record.text
        assert record.text.index(TEXT) < record.text.index("When did it open?") < record.text.index("Buses.")
    assert ipt_layout("T", [("q", "a")], (0, 0, 1)) == "T\n\nQuestion: q\nAnswer: a"
    none = IPTStage(FakeBackend(lambda c: "I do not know.")).process([doc()])
    assert [r.reason for r in none.rejected] == ["no_pairs"]


def test_recipes_run_through_the_python_api_with_token_counts():
    out = fi.run_stage("nemotron_qa", [{"id": "a", "text": TEXT}],
                       engine=FakeBackend(lambda c: "Question: When? Answer: 1902."))
    assert out.rows[0]["items"] == 1 and out.rows[0]["token_count"] == len(out.rows[0]["text"].split())
    assert out.stats["rows_in"] == 1 and out.stats["metrics"]["synthetic_tokens"] > 0


@pytest.mark.model
def test_each_recipe_gives_texts_that_parse_with_a_real_engine(test_gguf):
    docs = [{"id": d.document_id, "text": d.text} for d in wikipedia_documents() if 400 <= len(d.text) <= 900][:3]
    base = [f"generator.model={test_gguf}", "generator.kind=llamacpp", "generator.n_ctx=4096"]
    settings = {"wrap": ["wrap.styles=[medium]", "wrap.max_tokens=400"],
                "nemotron_qa": ["nemotron_qa.max_tokens=300"],
                "ipt": ["ipt.constrained=true"]}
    try:
        for recipe, overrides in settings.items():
            out = fi.run_stage(recipe, docs, overrides=base + overrides)
            assert out.rows, f"{recipe}: {[r['reason'] for r in out.rejected]}"
            for row in out.rows:
                assert row["token_count"] > 0 and row["source_token_count"] > 0 and row["items"] >= 1
                assert row["model"] == test_gguf.name
            assert out.stats["requests"] >= len(docs)
    finally:
        fi.close()
