"""Teacher data for distillation: the stage's own prompts, its own gates, reject counts, nulls, cache resume."""

from __future__ import annotations

import json

import pytest

from fineinstructions.backends.cache import CachedBackend, RequestCache
from fineinstructions.backends.fake import FakeBackend
from fineinstructions.distill.examples import (
    DistillError,
    cap_nulls,
    generate_examples,
    load_matches,
    load_queries,
    read_examples,
    split_heldout,
    write_examples,
)
from fineinstructions.distill.run import evaluate_stage
from fineinstructions.io.writers import write_records
from fineinstructions.records import Match, Query
from fineinstructions.stages.instantiate import InstantiateStage
from fineinstructions.stages.templatize import TemplatizeStage
from tests.stages.test_instantiate import DOC_A, DOC_B, match, responder

QUERIES = {
    "good": "What are the health benefits of green tea?",
    "good2": "How do I install numpy on windows 10",
    "prose": "Tell me a joke please",
    "novar": "Where is the best place to live?",
    "empty": "   ",
}


def templatizer(conversation) -> str:
    """A deterministic teacher: a valid template, prose, or a template without variables, by query."""
    query = conversation[-1]["content"].removeprefix("Query: ").strip()
    if "green tea" in query:
        return json.dumps({"template": "What are the health benefits of <fi>type of drink</fi>?",
                           "compatible_document_description": "An article on the health effects of a drink."})
    if "numpy" in query:
        return ('Sure! {"template": "How do I install <fi>software package</fi> on <fi>operating system</fi>", '
                '"compatible_document_description": "Installation instructions for a software package."}')
    if "joke" in query:
        return "Why did the chicken cross the road?"
    return json.dumps({"template": "Where is the best place to live?",
                       "compatible_document_description": "A guide comparing places to live."})


def queries() -> list[Query]:
    return [Query(query_id=k, text=v) for k, v in QUERIES.items()]


def test_templatize_prompts_are_the_stages_own_and_rejects_are_counted_by_reason():
    teacher = FakeBackend(templatizer, model_id="teacher-x")
    examples, report = generate_examples("templatize", queries(), teacher, batch_size=2)
    # The teacher saw exactly the conversations the stage itself sends (its default few-shot prompt).
    reference = FakeBackend(templatizer)
    TemplatizeStage(reference, retries=0).process(queries())
    assert teacher.calls == reference.calls
    assert report.inputs == 5 and report.kept == 2 and report.requests == 4
    assert dict(report.rejected) == {"empty_query": 1, "unparseable_json": 1, "no_variables": 1}
    assert report.kept + sum(report.rejected.values()) == report.inputs
    # The student is trained on the zero-shot preset, built by the stage with that prompt version.
    student_stage = TemplatizeStage(reference, "query_templatizer")
    by_id = {e.input_id: e for e in examples}
    assert by_id["good"].messages == student_stage.conversation(Query(query_id="good", text=QUERIES["good"]))
    assert by_id["good"].messages == [{"role": "user", "content": QUERIES["good"]}]
    assert by_id["good"].prompt_version == "templatize-query_templatizer"
    assert by_id["good"].teacher_prompt_version == "templatize-v2" and by_id["good"].teacher_model == "teacher-x"
    # Completions are canonical JSON that the stage's parser accepts (the "Sure!" preamble is gone).
    assert json.loads(by_id["good2"].completion) == {
        "template": "How do I install <fi>software package</fi> on <fi>operating system</fi>",
        "compatible_document_description": "Installation instructions for a software package."}
    # Same prompt version for teacher and student: the student's messages are the stage's few-shot ones.
    same, _ = generate_examples("templatize", queries()[:1], teacher, student_prompt_version="v2")
    assert same[0].messages == TemplatizeStage(reference).conversation(queries()[0])


def test_templatize_retries_use_the_stages_retry_sampling():
    seen = []

    def flaky(conversation):
        seen.append(conversation)
        return "no json" if len(seen) == 1 else templatizer(conversation)

    examples, report = generate_examples("templatize", queries()[:1], FakeBackend(flaky), retries=1)
    assert len(examples) == 1 and not report.rejected and report.requests == 2


def instantiate_matches() -> list[Match]:
    return [
        match("a", DOC_A, "What <fi>causes</fi> acid rain?", 0),
        match("b", DOC_B, "where is <fi>country</fi>?", 0),
        match("a", DOC_A, "What is the capital of <fi>country</fi>?", 1),
        match("b", DOC_B, "territories of <fi>country</fi>", 1),
        match("a", DOC_A, "What are the effects of <fi>x</fi>", 2),
        match("b", DOC_B, "garbage <fi>x</fi>", 2),
        match("b", DOC_B, "A template without variables", 3),
    ]


def test_instantiate_keeps_gated_pairs_and_nulls_with_the_stages_prompts():
    teacher = FakeBackend(responder, model_id="teacher-y")
    examples, report = generate_examples("instantiate", instantiate_matches(), teacher, batch_size=4,
                                         max_null_share=0.5)
    reference = FakeBackend(responder)
    InstantiateStage(reference).process(instantiate_matches())
    assert teacher.calls == reference.calls  # same prompts, same document-major order
    assert dict(report.rejected) == {"template_without_variables": 1, "leftover_fi": 1, "low_coverage": 1,
                                     "unparseable_output": 1, "unresolved_excerpt": 1}
    assert report.kept == 2 and report.nulls == 1
    pair = next(e for e in examples if not e.is_null)
    null = next(e for e in examples if e.is_null)
    assert null.completion == "null"
    # The released model's contract: a JSON user message, a JSON reply with the excerpt markers kept.
    assert json.loads(pair.messages[-1]["content"]) == {"instruction_template": "What <fi>causes</fi> acid rain?",
                                                       "document": DOC_A}
    reply = json.loads(pair.completion)
    assert reply["instantiated_instruction"] == "What causes acid rain?" and "<excerpt>" in reply["answer"]
    # With the teacher's own prompt version, the reply is the teacher's text as it came.
    same, _ = generate_examples("instantiate", instantiate_matches()[:1], teacher, student_prompt_version="v2")
    assert same[0].completion.startswith("<instruction>What causes acid rain?</instruction>")
    assert same[0].messages == InstantiateStage(reference).conversation(instantiate_matches()[0])


def test_null_share_is_capped_and_counted():
    _, report = generate_examples("instantiate", instantiate_matches(), FakeBackend(responder), max_null_share=0.0)
    assert report.rejected["null_over_share"] == 1 and report.nulls == 0
    examples, _ = generate_examples("instantiate", instantiate_matches(), FakeBackend(responder), max_null_share=1)
    assert sum(e.is_null for e in examples) == 1
    many = [e for e in examples if e.is_null] * 5 + [e for e in examples if not e.is_null] * 3
    assert sum(e.is_null for e in cap_nulls(many, 0.25)) == 1  # 3 answers -> at most 1 null (25 %)


def test_a_rerun_is_served_from_the_request_cache(tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    engine = FakeBackend(templatizer)
    first, report = generate_examples("templatize", queries(), CachedBackend(engine, cache, "templatize/v2"))
    assert report.requests == 4 and len(engine.calls) == 4
    second, report2 = generate_examples("templatize", queries(), CachedBackend(engine, cache, "templatize/v2"))
    assert len(engine.calls) == 4 and report2.requests == 0 and report2.cache_hits == 4
    assert [e.completion for e in first] == [e.completion for e in second]
    cache.close()


def test_examples_files_round_trip_and_bad_rows_are_named(tmp_path):
    examples, _ = generate_examples("templatize", queries(), FakeBackend(templatizer))
    for name in ("ex.parquet", "ex.jsonl"):
        write_examples(tmp_path / name, examples)
        assert read_examples(tmp_path / name, "templatize") == examples
    with pytest.raises(DistillError, match="not 'instantiate'"):
        read_examples(tmp_path / "ex.jsonl", "instantiate")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": "hi", "completion": "x"}) + "\n")
    with pytest.raises(DistillError, match="row 0: `messages`"):
        read_examples(bad)
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}], "completion": ""}) + "\n")
    with pytest.raises(DistillError, match="`completion`"):
        read_examples(bad)
    with pytest.raises(DistillError, match="not found"):
        read_examples(tmp_path / "missing.jsonl")


def test_inputs_from_files_run_folders_and_rows(tmp_path):
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps({"text": t, "id": k}) + "\n" for k, t in QUERIES.items()))
    loaded = load_queries(str(source))
    assert [q.query_id for q in loaded] == ["good", "good2", "prose", "novar"]  # the filter drops the blank one
    assert len(load_queries(str(source), limit=2, filter_queries=False)) == 2
    with pytest.raises(DistillError, match="input not found"):
        load_queries(str(tmp_path / "nope.jsonl"))
    # A pipeline run folder: the matches of work/match.
    write_records(tmp_path / "run" / "work" / "match" / "shard-00000.parquet", instantiate_matches(), Match)
    from_run = load_matches(str(tmp_path / "run"))
    assert len(from_run) == 7 and [m.document_id for m in from_run] == ["a"] * 3 + ["b"] * 4
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"template": "What is <fi>x</fi>?", "document": DOC_A}) + "\n"
                    + json.dumps({"template": "no document"}) + "\n")
    assert [m.template for m in load_matches(str(rows))] == ["What is <fi>x</fi>?"]
    train, held = split_heldout("instantiate", from_run, 2)
    assert {m.document_id for m in held} == {"b"} and len(held) == 2 and {m.document_id for m in train} == {"a"}
    train, held = split_heldout("templatize", loaded, 1)
    assert len(train) == 3 and held[0].query_id == "novar"


def test_evaluate_stage_reports_valid_rates():
    result = evaluate_stage("templatize", FakeBackend(templatizer), "v2", queries())
    assert result["inputs"] == 5 and result["valid"] == 2 and result["valid_rate"] == 0.4
    assert result["rejected"] == {"empty_query": 1, "unparseable_json": 1, "no_variables": 1}
    result = evaluate_stage("instantiate", FakeBackend(responder), "v2", instantiate_matches())
    assert result["valid"] == 2 and result["nulls"] == 1 and result["outputs"] == 1
