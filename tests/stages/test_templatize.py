from __future__ import annotations

import json

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.records import Query
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.templatize import TemplatizeStage, template_id, template_key

GOOD = json.dumps({"template": "What is <fi>scientific concept</fi>?",
                   "compatible_document_description": "An encyclopedia article explaining a scientific concept."})


def responder(conversation):
    query = conversation[-1]["content"]
    if "photosynthesis" in query:
        return GOOD
    if "capital" in query:
        return '{"template": "What is the capital of France?", "compatible_document_description": "A geography text."}'
    if "Golden Gate" in query:  # keeps a name of the query outside the variables
        return json.dumps({"template": "When was the Golden Gate Bridge <fi>event</fi>?",
                           "compatible_document_description": "A history of a famous bridge and its construction."})
    if "recipe" in query:  # rewrites the request into another one
        return json.dumps({"template": "Write a poem about <fi>topic</fi>.",
                           "compatible_document_description": "Poetry collections about many different topics."})
    return "Sorry, I can't."


def test_templatize_keeps_valid_and_names_every_drop():
    backend = FakeBackend(responder)
    stage = TemplatizeStage(backend, retries=1)
    queries = [
        Query(query_id="1", text="What is photosynthesis?"),
        Query(query_id="2", text="What is the capital of France?"),
        Query(query_id="3", text="Tell me a joke"),
        Query(query_id="4", text="   "),
        Query(query_id="5", text="x" * 5000),
        Query(query_id="6", text="When was the Golden Gate Bridge built?"),
        Query(query_id="7", text="Give me a lasagne recipe"),
        Query(query_id="8", text="bad\x00bytes"),
    ]
    stats = StageStats()
    result = stage.run_batch(queries, stats)
    assert [t.query_id for t in result.records] == ["1"]
    template = result.records[0]
    assert template.variables == ["scientific concept"]
    assert template.template_id == template_id("What is <fi>scientific concept</fi>?")
    assert template.prompt_version == "templatize-v2" and template.model_id == "fake"
    reasons = {r.row["query_id"]: r.reason for r in result.rejected}
    assert reasons == {"2": "no_variables", "3": "unparseable_json", "4": "empty_query", "5": "query_too_long",
                       "6": "leaks_specifics", "7": "intent_changed", "8": "binary_query"}
    assert stats.rows_in == 8 and stats.rows_out == 1 and sum(stats.dropped.values()) == 7
    # One batch call for the five queries that passed the input checks, then one retry of the four invalid.
    assert len(backend.calls) == 5 + 4
    assert stats.metrics == {"retried": 4, "recovered_by_retry": 0}


def test_a_retry_can_recover_an_invalid_output():
    answers: dict[str, int] = {}

    def flaky(conversation):
        query = conversation[-1]["content"]
        answers[query] = answers.get(query, 0) + 1
        return "not json" if answers[query] == 1 else GOOD

    stage = TemplatizeStage(FakeBackend(flaky), retries=2)
    stats = StageStats()
    result = stage.run_batch([Query(query_id="1", text="What is photosynthesis?")], stats)
    assert len(result.records) == 1 and stats.metrics["recovered_by_retry"] == 1


def test_template_id_and_skeleton():
    assert template_id("What is <fi>x</fi>?") == template_id("what  is <fi>x</fi>")
    assert template_id("What is <fi>x</fi>?") != template_id("What is x?")
    assert template_key("What is <fi>Chemical  element</fi>?") == template_key("what is <fi>chemical element</fi>")
    assert template_key("What is <fi>chemical element</fi>?") != template_key("What is <fi>disease</fi>?")


def test_a_template_whose_variables_copy_the_querys_values_is_retried_then_dropped():
    copied = json.dumps({"template": "How do I install <fi>numpy</fi> on <fi>Windows</fi>?",
                         "compatible_document_description": "Installation instructions for a Python package."})
    described = json.dumps({"template": "How do I install <fi>Python package</fi> on <fi>operating system</fi>?",
                            "compatible_document_description": "Installation instructions for a Python package."})
    attempts: list[str] = []

    def respond(conversation):
        attempts.append(conversation[-1]["content"])
        return copied if len(attempts) == 1 or "always" in conversation[-1]["content"] else described

    stage = TemplatizeStage(FakeBackend(respond), retries=1)
    stats = StageStats()
    result = stage.run_batch([Query(query_id="1", text="How do I install numpy on Windows?")], stats)
    assert [t.template for t in result.records] == [
        "How do I install <fi>Python package</fi> on <fi>operating system</fi>?"]
    assert stats.metrics["recovered_by_retry"] == 1
    always = stage.run_batch([Query(query_id="2", text="How do I install numpy on Windows? (always)")], StageStats())
    assert [r.reason for r in always.rejected] == ["specific_variable"]
