"""Structured outputs: SamplingParams.json_schema on every engine that has them, and unchanged request keys
for requests that do not use it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fineinstructions.backends.base import SamplingParams, schema_text
from fineinstructions.backends.cache import request_key
from fineinstructions.backends.openai_http import OpenAICompatibleBackend
from fineinstructions.prompts import load_prompt
from tests.backends.test_openai_http import send_completion
from tests.conftest import TEST_MODEL, free_port

# Small enough for the 135M test model to fill within a few tokens.
ANSWER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                  "sunny": {"type": "boolean"}},
                 "required": ["city", "sunny"], "additionalProperties": False}
WEATHER = [{"role": "user", "content": "Reply in JSON: which city is the capital of France, and is it sunny there?"}]


def test_fingerprints_of_requests_without_a_schema_are_unchanged():
    """Request caches are keyed on these: the values were computed before `json_schema` existed."""
    assert SamplingParams().fingerprint() == "a633294879228504"
    grammar = SamplingParams(temperature=0.7, max_tokens=200, seed=1, stop=("x",), grammar='root ::= "a"')
    assert grammar.fingerprint() == "1e85fc64b9a0c6eb"
    key = request_key("m", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=200))
    assert key == "9337d12193ef09711d20635e154e8e33498321de4a0b397216f4db0fd7cb1bca"
    with_schema = SamplingParams(json_schema=schema_text(ANSWER_SCHEMA))
    assert with_schema.fingerprint() != SamplingParams().fingerprint()
    assert with_schema.schema() == ANSWER_SCHEMA and SamplingParams().schema() is None
    assert hash(with_schema) == hash(SamplingParams(json_schema=schema_text(dict(ANSWER_SCHEMA))))


def test_schema_text_keeps_the_property_order():
    """The order of `properties` is the order engines generate them in: the template comes first."""
    schema = json.loads(load_prompt("templatize", "v2").json_schema or "{}")
    assert list(schema["properties"]) == ["template", "compatible_document_description"]
    assert schema_text({"b": 1, "a": 2}) == '{"b":1,"a":2}'


# --- llama.cpp in-process -------------------------------------------------------------------------------------


@pytest.mark.model
def test_llamacpp_output_validates_against_the_schema(llama_backend):
    jsonschema = pytest.importorskip("jsonschema")
    sampling = SamplingParams(max_tokens=48, json_schema=schema_text(ANSWER_SCHEMA))
    out = llama_backend.generate([WEATHER, WEATHER], sampling)
    for g in out:
        assert g.ok and g.finish_reason == "stop", g
        jsonschema.validate(json.loads(g.text), ANSWER_SCHEMA)
    assert len(llama_backend._grammars) >= 1
    compiled = dict(llama_backend._grammars)
    llama_backend.generate([WEATHER], sampling)
    assert llama_backend._grammars == compiled  # compiled once per schema


@pytest.mark.model
def test_llamacpp_templatize_schema_forbids_a_template_without_a_variable(llama_backend):
    """The 135M model never writes a <fi> variable unconstrained; under the schema it cannot close the
    template before one (it writes one or runs to max_tokens)."""
    prompt = load_prompt("templatize", "v2")
    conversation = prompt.conversation(query="What is the tallest mountain in Japan?")
    text = llama_backend.generate([conversation], SamplingParams(max_tokens=40, json_schema=prompt.json_schema))[0].text
    assert text.startswith('{"template')
    closed = text.find('"compatible_document_description"')
    assert closed == -1 or "<fi>" in text[:closed], text


@pytest.mark.model
def test_llamacpp_a_schema_that_does_not_compile_fails_its_rows(llama_backend):
    unanchored = schema_text({"type": "object", "properties": {"t": {"type": "string", "pattern": "a+"}}})
    out = llama_backend.generate([WEATHER], SamplingParams(max_tokens=8, json_schema=unanchored))[0]
    assert not out.ok and "engine_error" in (out.error or "")


# --- vLLM: the mapping, and that xgrammar reads the packaged grammar and schema (no engine is started) ----------


def test_vllm_maps_the_schema_and_the_grammar_to_structured_outputs():
    pytest.importorskip("vllm")
    from fineinstructions.backends.vllm_engine import VLLMBackend, structured_outputs

    assert structured_outputs(SamplingParams()) is None
    params = structured_outputs(SamplingParams(json_schema=schema_text(ANSWER_SCHEMA)))
    assert params.json == ANSWER_SCHEMA and params.grammar is None
    both = structured_outputs(SamplingParams(grammar='root ::= "a"', json_schema=schema_text(ANSWER_SCHEMA)))
    assert both.grammar == 'root ::= "a"' and both.json is None  # one constraint per request: the grammar wins
    built = VLLMBackend._sampling(SamplingParams(max_tokens=7, json_schema=schema_text(ANSWER_SCHEMA)))
    assert built.max_tokens == 7 and built.structured_outputs.json == ANSWER_SCHEMA


def test_xgrammar_reads_the_instantiate_grammar_and_the_templatize_schema():
    xgrammar = pytest.importorskip("xgrammar")
    accepts = pytest.importorskip("xgrammar.testing")._is_grammar_accept_string
    grammar = xgrammar.Grammar.from_ebnf(load_prompt("instantiate", "v2").grammar or "")
    answer = ("<values>okapi</values>\n<instruction>What is an okapi?</instruction>\n"
              "<answer>It is <excerpt>The okapi is<...>the Congo.</excerpt></answer>")
    assert accepts(grammar, answer) and accepts(grammar, "null")
    assert not accepts(grammar, "<answer>no values</answer>")
    schema = xgrammar.Grammar.from_json_schema(load_prompt("templatize", "v2").json_schema or "")
    good = {"template": "What is <fi>x</fi>?", "compatible_document_description": "A text about x."}
    assert accepts(schema, json.dumps(good))
    assert not accepts(schema, json.dumps(good | {"template": "What is x?"}))
    assert not accepts(schema, json.dumps(good | {"extra": "no"}))


# --- OpenAI-compatible servers ----------------------------------------------------------------------------------


class RecordingHandler(BaseHTTPRequestHandler):
    """Answers like an OpenAI server and keeps every request body."""

    bodies: list[dict[str, Any]] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        RecordingHandler.bodies.append(body)
        send_completion(self, '{"city": "Paris", "sunny": true}', completion_tokens=9)

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), RecordingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RecordingHandler.bodies = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_openai_sends_response_format_only_when_enabled(recording_server, caplog):
    sampling = SamplingParams(max_tokens=16, json_schema=schema_text(ANSWER_SCHEMA))
    plain = OpenAICompatibleBackend(recording_server, "m", max_retries=0)
    with caplog.at_level(logging.WARNING, logger="fineinstructions.backends.openai_http"):
        plain.generate([WEATHER, WEATHER], sampling)
        plain.generate([WEATHER], sampling)
    assert [b.get("response_format") for b in RecordingHandler.bodies] == [None] * 3
    assert not any("json_schema" in b or "grammar" in b for b in RecordingHandler.bodies)
    assert sum("JSON schema not sent" in r.message for r in caplog.records) == 1  # once per backend

    RecordingHandler.bodies.clear()
    OpenAICompatibleBackend(recording_server, "m", send_json_schema=True).generate([WEATHER], sampling)
    (body,) = RecordingHandler.bodies
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "reply", "schema": ANSWER_SCHEMA, "strict": True}}
    assert "grammar" not in body and "json_schema" not in body

    RecordingHandler.bodies.clear()
    OpenAICompatibleBackend(recording_server, "m").generate([WEATHER], SamplingParams(max_tokens=16))
    assert "response_format" not in RecordingHandler.bodies[0]  # nothing asked, nothing sent


def test_llama_cpp_dialect_sends_json_schema_and_the_grammar_first(recording_server):
    schema = schema_text(ANSWER_SCHEMA)
    backend = OpenAICompatibleBackend(recording_server, "m", send_grammar=True)
    backend.generate([WEATHER], SamplingParams(json_schema=schema))
    backend.generate([WEATHER], SamplingParams(json_schema=schema, grammar='root ::= "a"'))
    first, second = RecordingHandler.bodies
    assert first["json_schema"] == ANSWER_SCHEMA
    assert first["response_format"] == {"type": "json_object", "schema": ANSWER_SCHEMA}
    assert second["grammar"] == 'root ::= "a"' and "json_schema" not in second and "response_format" not in second


@pytest.mark.server
def test_real_llama_cpp_server_honours_the_schema(llama_server):
    jsonschema = pytest.importorskip("jsonschema")
    backend = OpenAICompatibleBackend(llama_server, TEST_MODEL, max_concurrency=1, timeout_s=60, send_grammar=True)
    out = backend.generate([WEATHER], SamplingParams(max_tokens=48, json_schema=schema_text(ANSWER_SCHEMA)))[0]
    assert out.ok and out.finish_reason == "stop", out
    jsonschema.validate(json.loads(out.text), ANSWER_SCHEMA)


def test_the_openai_backend_config_turns_the_json_schema_on():
    from fineinstructions.backends.factory import create_backend
    from fineinstructions.config import BackendConfig

    plain = create_backend(BackendConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m"))
    strict = create_backend(BackendConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m", json_schema=True))
    assert plain.send_json_schema is False and strict.send_json_schema is True
