from __future__ import annotations

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
    assert {r.reason for r in result.rejected} == {"empty_document", "document_too_short"}


def test_min_score_drops_weak_candidates(index, embedder):
    stage = MatchStage(index, embedder, top_k=3, min_score=0.99)
    result = stage.process([Document(document_id="d", text=LONG)])
    assert result.records == [] and result.rejected[0].reason == "no_template_above_min_score"
