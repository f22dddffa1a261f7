from __future__ import annotations

import json

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.records import Query
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.templatize import TemplatizeStage, template_id

GOOD = json.dumps({"template": "What is <fi>scientific concept</fi>?",
                   "compatible_document_description": "An encyclopedia article explaining a scientific concept."})


def responder(conversation):
    query = conversation[-1]["content"]
    if "photosynthesis" in query:
        return GOOD
    if "capital" in query:
        return '{"template": "What is the capital of France?", "compatible_document_description": "A geography text."}'
    return "Sorry, I can't."


def test_templatize_keeps_valid_and_names_every_drop():
    backend = FakeBackend(responder)
    stage = TemplatizeStage(backend)
    queries = [
        Query(query_id="1", text="What is photosynthesis?"),
        Query(query_id="2", text="What is the capital of France?"),
        Query(query_id="3", text="Tell me a joke"),
        Query(query_id="4", text="   "),
        Query(query_id="5", text="x" * 5000),
    ]
    stats = StageStats()
    result = stage.run_batch(queries, stats)
    assert [t.query_id for t in result.records] == ["1"]
    template = result.records[0]
    assert template.variables == ["scientific concept"]
    assert template.template_id == template_id("What is <fi>scientific concept</fi>?")
    assert template.prompt_version == "templatize-v1" and template.model_id == "fake"
    assert {r.reason for r in result.rejected} == {"no_variables", "unparseable_json", "empty_query", "query_too_long"}
    assert stats.rows_in == 5 and stats.rows_out == 1 and sum(stats.dropped.values()) == 4
    # The model is asked only for the three queries that passed the input checks, in one batch.
    assert len(backend.calls) == 3


def test_template_id_ignores_case_and_spacing():
    assert template_id("What is <fi>x</fi>?") == template_id("what  is <fi>x</fi>?")
