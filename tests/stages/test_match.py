from __future__ import annotations

from collections import Counter

import pytest

from fineinstructions.records import Document, Template
from fineinstructions.stages.index import IndexMismatch, TemplateIndex
from fineinstructions.stages.match import MatchStage

TEMPLATES = [
    Template(template_id="t-person", template="Who was <fi>notable person</fi>?",
             compatible_document_description="A biography of a notable person describing their life and work."),
    Template(template_id="t-city", template="What is there to see in <fi>city</fi>?",
             compatible_document_description="A travel description of a city with its landmarks and sights."),
    Template(template_id="t-disease", template="What are the symptoms of <fi>disease</fi>?",
             compatible_document_description="A medical article describing a disease, its symptoms and treatment."),
    Template(template_id="t-person", template="Who was <fi>notable person</fi>?",  # exact duplicate
             compatible_document_description="A biography of a notable person describing their life and work."),
]
LONG = ("Influenza is an infectious disease caused by influenza viruses. Symptoms range from mild to severe and "
        "often include fever, runny nose, sore throat, muscle pain, headache, coughing, and fatigue. " * 2
        + "Paris is the capital of France, with landmarks such as the Eiffel Tower, the Louvre museum and "
          "Notre-Dame cathedral, which attract millions of visitors each year. " * 2)


@pytest.fixture(scope="module")
def index(embedder):
    return TemplateIndex.build(TEMPLATES, embedder)


@pytest.fixture(scope="module")
def crowded(embedder):
    """Two near-identical disease templates (the less similar one popular) and a distinct third, indexed by their
    descriptions (the twins' descriptions are the near duplicates)."""
    return TemplateIndex.build(TEMPLATES[:2] + [
        Template(template_id="t-disease", template="What are the symptoms of <fi>disease</fi>?",
                 compatible_document_description="A medical article about an infectious disease and its "
                                                 "symptoms like fever and coughing."),
        Template(template_id="t-disease-2", template="Which symptoms does <fi>illness</fi> cause?",
                 compatible_document_description="A medical article about an infectious disease and its "
                                                 "symptoms, such as fever and cough.", popularity=50),
        Template(template_id="t-vaccine", template="How can <fi>illness</fi> be prevented?",
                 compatible_document_description="An article about vaccination as the prevention of an illness."),
    ], embedder, text="description")


def test_index_deduplicates_and_round_trips(index, embedder, tmp_path):
    assert index.duplicates_removed == 1 and len(index.templates) == 3
    index.save(tmp_path / "idx")
    loaded = TemplateIndex.load(tmp_path / "idx", embedder)
    assert [t.template_id for t in loaded.templates] == [t.template_id for t in index.templates]
    assert loaded.index.ntotal == 3


def test_index_built_with_another_model_is_refused(index, embedder, tmp_path):
    index.save(tmp_path / "idx")
    meta = tmp_path / "idx" / "index.json"
    meta.write_text(meta.read_text().replace(embedder.fingerprint, "0" * 16))
    with pytest.raises(IndexMismatch, match="rebuild"):
        TemplateIndex.load(tmp_path / "idx", embedder)


def test_match_finds_templates_for_each_part_of_a_document(index, embedder):
    stage = MatchStage(index, embedder, top_k=2, coverage_chunks=4, sigma=0.1)
    docs = [Document(document_id="flu-paris", text=LONG), Document(document_id="empty", text=" \n "),
            Document(document_id="short", text="Too short.")]
    result = stage.process(docs)
    ids = [m.template_id for m in result.records]
    assert set(ids) == {"t-disease", "t-city"}  # one template per half of the document
    assert all(m.document_id == "flu-paris" and m.text == LONG for m in result.records)
    assert [m.rank for m in result.records] == [0, 1]
    assert result.records[0].score >= result.records[1].score
    assert {r.reason for r in result.rejected} == {"empty_document", "document_too_short: 2 words"}


def test_min_score_drops_weak_candidates(index, embedder):
    stage = MatchStage(index, embedder, top_k=3, min_score=0.99)
    result = stage.process([Document(document_id="d", text=LONG)])
    assert result.records == [] and result.rejected[0].reason == "no_template_above_min_score"


FLU = ("Influenza is an infectious disease caused by influenza viruses. Symptoms range from mild to severe and "
       "often include fever, runny nose, sore throat, muscle pain, headache, coughing, and fatigue. "
       "Vaccination is the main prevention.")


def test_markup_only_and_huge_documents_are_rejected_and_the_rest_matched(index, embedder):
    huge = "word " * 2_000_000  # 10 MB
    docs = [Document(document_id="markup", text="<div><br/>&nbsp;</div>" * 40),
            Document(document_id="huge", text=huge), Document(document_id="flu", text=FLU)]
    result = MatchStage(index, embedder).process(docs)
    reasons = {r.row["document_id"]: r.reason for r in result.rejected}
    assert reasons["markup"] == "markup_only"
    assert reasons["huge"].startswith("document_too_long: 10000000 chars")
    huge_row = next(r.row for r in result.rejected if r.row["document_id"] == "huge")
    assert len(huge_row["text"]) == 1000  # the reject log keeps a preview, not 10 MB
    assert {m.document_id for m in result.records} == {"flu"}


def test_mmr_passes_over_a_near_duplicate_template(crowded, embedder):
    doc = [Document(document_id="flu", text=FLU)]
    # Ten coverage windows: with five, one window holds only the vaccination sentence and t-vaccine leads anyway.
    plain = [m.template_id for m in MatchStage(crowded, embedder, top_k=2, coverage_chunks=10,
                                               mmr_lambda=1.0).process(doc).records]
    assert set(plain) == {"t-disease", "t-disease-2"}  # by relevance alone both twins win
    diverse = [m.template_id for m in MatchStage(crowded, embedder, top_k=2,  # lambda 0.7
                                                 coverage_chunks=10).process(doc).records]
    assert diverse == ["t-disease", "t-vaccine"]


def test_popularity_weight_prefers_the_popular_twin(crowded, embedder):
    doc = [Document(document_id="flu", text=FLU)]
    top = MatchStage(crowded, embedder, top_k=1, popularity_weight=0.1).process(doc).records[0]
    assert top.template_id == "t-disease-2"


def test_use_cap_counts_across_batches_and_from_prior_uses(crowded, embedder):
    stage = MatchStage(crowded, embedder, top_k=1, mmr_lambda=1.0, max_template_uses=1)
    first = stage.process([Document(document_id="a", text=FLU)]).records[0].template_id
    second = stage.process([Document(document_id="b", text=FLU)]).records[0].template_id
    assert first != second
    resumed = MatchStage(crowded, embedder, top_k=1, mmr_lambda=1.0, max_template_uses=1,
                         prior_uses=Counter({first: 1, second: 1}))
    third = resumed.process([Document(document_id="c", text=FLU)]).records[0].template_id
    assert third not in {first, second}
    capped = MatchStage(crowded, embedder, top_k=1, max_template_uses=1,
                        prior_uses=Counter({t.template_id: 1 for t in crowded.templates}))
    assert capped.process([Document(document_id="d", text=FLU)]).rejected[0].reason == "templates_at_use_cap"


def test_a_sharded_index_matches_like_one_index(index, embedder):
    from fineinstructions.stages.index import build_index

    sharded = build_index(TEMPLATES, embedder, "Flat", shards=2)
    doc = [Document(document_id="flu-paris", text=LONG)]

    def chosen(bank):
        return [(m.template_id, m.part) for m in MatchStage(bank, embedder, top_k=3).process(doc).records]

    assert chosen(index) == chosen(sharded)


def test_a_long_document_is_matched_by_its_later_parts(index, embedder):
    flu = "Influenza is an infectious disease with fever, cough, sore throat and fatigue among its symptoms. "
    paris = "Paris is a city whose landmarks, the Eiffel Tower and the Louvre, draw millions of visitors. "
    long_doc = flu * 25 + paris * 25  # about 1,000 tokens: four times the model's window
    global_only = MatchStage(index, embedder, top_k=1, coverage_chunks=0)
    covered = MatchStage(index, embedder, top_k=3, coverage_chunks=10)
    doc = [Document(document_id="long", text=long_doc)]
    assert [m.template_id for m in covered.process(doc).records][:2] and \
        "t-city" in {m.template_id for m in covered.process(doc).records}
    city = next(m for m in covered.process(doc).records if m.template_id == "t-city")
    assert city.part >= 5  # found by a window in the second half
    assert global_only.process(doc).records[0].part == -1
