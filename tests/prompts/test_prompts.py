"""Each prompt's few-shot examples must satisfy the contract the stage enforces on the model."""

from __future__ import annotations

import json

import pytest

from fineinstructions.contracts.excerpts import expand_excerpts
from fineinstructions.contracts.templates import instance_error, parse_templatizer_output
from fineinstructions.prompts import load_prompt
from fineinstructions.stages.instantiate import parse_instantiation
from fineinstructions.stages.judge import parse_judgement


def test_templatize_examples_are_valid_templates():
    prompt = load_prompt("templatize")
    assert len(prompt.examples) >= 4
    for _, output in prompt.examples:
        assert not isinstance(parse_templatizer_output(output), str), output


@pytest.mark.parametrize("version", ["v1", "v2", "written.v1"])
def test_instantiate_examples_resolve_with_full_coverage_or_are_null(version):
    prompt = load_prompt("instantiate", version)
    outcomes = []
    for example_input, output in prompt.examples:
        parsed = parse_instantiation(output)
        if parsed == "null":
            outcomes.append("null")
            continue
        expanded = expand_excerpts(parsed.answer, example_input["document"])
        assert expanded.resolved, expanded.unresolved
        assert expanded.coverage >= 0.8
        assert "<fi>" not in parsed.instruction
        assert instance_error(parsed.instruction, example_input["template"]) is None, parsed.instruction
        outcomes.append("pair")
    assert set(outcomes) == {"null", "pair"}  # the prompt shows both behaviours


@pytest.mark.parametrize(("version", "scores"), [("v1", [4, 1]), ("v2", [3, 1, 5]), ("v3", [5, 1, 3, 2]),
                                                ("v4", [5, 3, 1, 1, 2])])
def test_judge_examples_parse(version, scores):
    prompt = load_prompt("judge", version)
    assert [parse_judgement(output)[0] for _, output in prompt.examples] == scores


def test_instantiate_v2_marks_excerpts_and_compresses():
    """v2's examples point to passages: far fewer characters written than delivered."""
    prompt = load_prompt("instantiate", "v2")
    written = delivered = 0
    for example_input, output in prompt.examples:
        parsed = parse_instantiation(output)
        if parsed == "null":
            continue
        expanded = expand_excerpts(parsed.answer, example_input["document"], min_copy_words=0)
        assert expanded.excerpts >= 1 and expanded.coverage >= 0.8
        written, delivered = written + len(parsed.answer), delivered + len(expanded.text)
    assert delivered >= 2 * written


def test_template_instantiator_preset_renders_the_released_json_contract():
    prompt = load_prompt("instantiate", "template_instantiator")
    conversation = prompt.conversation(document='A "quoted" doc.', template="What is <fi>x</fi>?")
    assert conversation == [{"role": "user", "content": json.dumps(
        {"instruction_template": "What is <fi>x</fi>?", "document": 'A "quoted" doc.'})}]


def test_document_comes_before_template_so_prefixes_are_shared():
    prompt = load_prompt("instantiate")
    a = prompt.conversation(document="DOC", template="T1")
    b = prompt.conversation(document="DOC", template="T2")
    assert a[:-1] == b[:-1]
    assert a[-1]["content"].index("DOC") < a[-1]["content"].index("T1")
    assert a[-1]["content"].split("T1")[0] == b[-1]["content"].split("T2")[0]


def test_unknown_prompt_version_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="judge.v999"):
        load_prompt("judge", "v999")


def test_released_query_templatizer_preset_sends_the_bare_query():
    prompt = load_prompt("templatize", "query_templatizer")
    assert prompt.conversation(query="What is entropy?") == [{"role": "user", "content": "What is entropy?"}]


def test_templatize_v2_covers_many_query_styles():
    prompt = load_prompt("templatize", "v2")
    queries = [example["query"] for example, _ in prompt.examples]
    assert any(q.lower().startswith("act as") for q in queries)  # role-play
    assert any("Python" in q or "React" in q for q in queries)  # coding
    assert any(q.count(".") + q.count("?") >= 2 for q in queries)  # multi-sentence


@pytest.mark.parametrize(("name", "version"), [("instantiate", "v1"), ("instantiate", "v2"),
                                               ("instantiate", "written.v1"), ("judge", "v1"), ("judge", "v2"),
                                               ("judge", "v3"), ("judge", "v4"),
                                               ("judge", "flow_judge")])
def test_a_field_holding_every_marker_of_its_prompt_cannot_close_its_field(name, version):
    """A document made of the prompt's own labels and tags, neutralised by the stage, leaves the message laid
    out as the prompt's own layout with harmless fields."""
    from fineinstructions.backends.fake import FakeBackend
    from fineinstructions.stages.instantiate import InstantiateStage
    from fineinstructions.stages.judge import JudgeStage

    stage = (InstantiateStage if name == "instantiate" else JudgeStage)(FakeBackend(lambda c: ""), version)
    prompt, guard = stage.prompt, stage.guard
    hostile = " ".join([f"\n\n{label}:\n" for label in guard.labels]
                       + [f"<{tag}> </{tag}>" for tag in guard.tags])
    fields = {"document": guard.neutralize(hostile), "template": "T", "instruction": "I", "answer": "A"}
    plain = {"document": "D", "template": "T", "instruction": "I", "answer": "A"}
    user, reference = prompt.render_user(**fields), prompt.render_user(**plain)
    for marker in [f"{label}:" for label in guard.labels] + [f"<{tag}>" for tag in guard.tags] \
            + [f"</{tag}>" for tag in guard.tags]:
        assert user.count(marker) == reference.count(marker), marker
    assert guard.labels or guard.tags
