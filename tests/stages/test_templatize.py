from __future__ import annotations

import json

import pytest

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import demo_config, stage_config
from fineinstructions.errors import ConfigError
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Query
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.templatize import TemplatizeStage, template_id, template_key
from tests.test_config import DEMO_FINGERPRINT

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


class RecordingBackend(FakeBackend):
    """A FakeBackend that keeps the SamplingParams of every call."""

    def __init__(self, responder):
        super().__init__(responder)
        self.samplings: list[SamplingParams] = []

    def generate(self, conversations, sampling):
        self.samplings.append(sampling)
        return super().generate(conversations, sampling)


def test_structured_passes_the_prompts_schema_and_still_parses_every_reply():
    query = Query(query_id="1", text="What is photosynthesis?")
    off = RecordingBackend(responder)
    TemplatizeStage(off).run_batch([query], StageStats())
    assert off.samplings[0].json_schema is None
    assert off.samplings[0].fingerprint() == SamplingParams(max_tokens=200).fingerprint()  # request keys unchanged

    on = RecordingBackend(lambda conversation: "not json")  # an engine that ignores the schema
    stage = TemplatizeStage(on, retries=1, structured=True)
    result = stage.run_batch([query], StageStats())
    assert [s.json_schema for s in on.samplings] == [stage.prompt.json_schema] * 2  # the retry keeps the schema
    assert json.loads(on.samplings[0].json_schema or "")["required"] == ["template", "compatible_document_description"]
    assert [r.reason for r in result.rejected] == ["unparseable_json"]  # the parser still judges the reply


def test_structured_needs_a_prompt_with_a_schema():
    with pytest.raises(ConfigError, match="json_schema"):
        TemplatizeStage(FakeBackend(responder), prompt_version="v1", structured=True)


def test_the_v2_schema_accepts_the_prompts_own_examples_and_refuses_a_template_without_a_variable():
    jsonschema = pytest.importorskip("jsonschema")
    prompt = load_prompt("templatize", "v2")
    schema = json.loads(prompt.json_schema or "")
    for _, output in prompt.examples:
        jsonschema.validate(json.loads(output), schema)
    for bad in ({"template": "What is x?", "compatible_document_description": "A text."},
                {"template": "What is <fi>x</fi>?", "compatible_document_description": "A text.", "extra": "no"},
                {"template": "What is <fi>x</fi>?"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_the_schema_leaves_the_prompt_and_the_config_fingerprint_as_they_were():
    prompt = load_prompt("templatize", "v2")
    assert prompt.version == "templatize-v2" and prompt.grammar is None
    # the conversation sent (and so every request key) does not carry the schema
    assert "json_schema" not in json.dumps(prompt.conversation(query="What is photosynthesis?"))
    config = demo_config()
    assert config.templatize.structured is False and config.fingerprint() == DEMO_FINGERPRINT
    config.templatize.structured = True
    assert config.fingerprint() != DEMO_FINGERPRINT


def test_from_config_reads_templatize_structured():
    config = stage_config({"templatize": {"structured": True}})
    assert config.templatize.structured is True

    class Context:
        def backend(self, stage, prompt_version):
            return FakeBackend(responder)

    stage = TemplatizeStage.from_config(config, Context())  # type: ignore[arg-type]
    assert stage.json_schema == stage.prompt.json_schema is not None
