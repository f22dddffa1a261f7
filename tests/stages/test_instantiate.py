from __future__ import annotations

import pytest

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.records import Match
from fineinstructions.stages.instantiate import InstantiateStage, parse_instantiation

DOC_A = ("Acid rain is rain or any other form of precipitation that is unusually acidic. It can have harmful "
         "effects on plants, aquatic animals and infrastructure. Acid rain is caused by emissions of sulfur "
         "dioxide and nitrogen oxide, which react with the water molecules in the atmosphere to produce acids.")
DOC_B = ("Denmark is a Nordic country in Northern Europe. It is the most populous and politically central "
         "constituent of the Kingdom of Denmark, a constitutionally unitary state that includes the "
         "autonomous territories of the Faroe Islands and Greenland in the North Atlantic Ocean.")

RESPONSES = {
    ("acid", "causes"): "<instruction>What causes acid rain?</instruction>\n<answer>It is caused by emissions: "
                        "<excerpt>Acid rain is caused<...>to produce acids.</excerpt></answer>",
    ("acid", "capital"): "null",
    ("acid", "effects"): "<instruction>What are the effects of acid rain?</instruction><answer>"
                         "<excerpt>It can have harmful<...>in Paris.</excerpt></answer>",
    ("denmark", "where"): "<instruction>Where is Denmark?</instruction><answer>Denmark is in Northern Europe, "
                          "a lovely place with many bicycles and friendly people.</answer>",
    ("denmark", "territories"): "<instruction>Which territories belong to <fi>country</fi>?</instruction>"
                                "<answer><excerpt>the Faroe Islands and Greenland</excerpt></answer>",
    ("denmark", "garbage"): "I think the answer is complicated",
}


def responder(conversation):
    user = conversation[-1]["content"]
    doc = "acid" if "Acid rain" in user else "denmark"
    template = user.split("TEMPLATE:")[1]
    for (d, key), response in RESPONSES.items():
        if d == doc and key in template:
            return response
    raise AssertionError(template)


def match(doc_id: str, text: str, template: str, rank: int) -> Match:
    return Match(document_id=doc_id, template_id=f"t-{template[:12]}", score=0.5, rank=rank, text=text,
                 template=template)


def test_instantiate_gates_with_named_reasons_and_document_major_order():
    backend = FakeBackend(responder)
    stage = InstantiateStage(backend, min_coverage=0.8, config_fingerprint="abc")
    batch = [
        match("a", DOC_A, "What <fi>causes</fi> acid rain?", 0),
        match("b", DOC_B, "where is <fi>country</fi>?", 0),
        match("a", DOC_A, "What is the capital of <fi>country</fi>?", 1),
        match("b", DOC_B, "territories of <fi>country</fi>", 1),
        match("a", DOC_A, "What are the effects of <fi>x</fi>", 2),
        match("b", DOC_B, "garbage <fi>x</fi>", 2),
    ]
    result = stage.process(batch)
    assert len(result.records) == 1
    pair = result.records[0]
    assert pair.instantiated_instruction == "What causes acid rain?"
    assert pair.answer.startswith("It is caused by emissions: Acid rain is caused by emissions of sulfur")
    assert pair.answer.endswith("to produce acids.")
    assert "<excerpt>" in pair.answer_with_markers and "<excerpt>" not in pair.answer
    assert pair.excerpt_coverage >= 0.8
    assert pair.token_count == len(DOC_A.split())
    assert pair.synthetic_token_count == len(pair.instantiated_instruction.split()) + len(pair.answer.split())
    assert pair.config_fingerprint == "abc" and pair.instantiate_prompt_version == "instantiate-v1"
    reasons = sorted(r.reason for r in result.rejected)
    assert reasons == ["leftover_fi", "low_coverage", "null", "unparseable_output",
                       "unresolved_excerpt: excerpt_not_found"]
    # All of document a's templates are generated back to back, then document b's.
    docs = ["a" if "Acid rain" in c[-1]["content"] else "b" for c in backend.calls]
    assert docs == ["a", "a", "a", "b", "b", "b"]


@pytest.mark.parametrize(("text", "expected"), [
    ("null", "null"),
    ("NULL.", "null"),
    ('"null"', "null"),
    ("", "empty_output"),
    ("```\n<instruction>Q?</instruction>\n<answer>A</answer>\n```", ("Q?", "A")),
    ('{"instantiated_instruction": "Q?", "answer": "A"}', ("Q?", "A")),
    ("<instruction>Q?</instruction><answer>cut off", ("Q?", "cut off")),
    ("no tags here", "unparseable_output"),
])
def test_parse_instantiation(text, expected):
    parsed = parse_instantiation(text)
    if isinstance(expected, str):
        assert parsed == expected
    else:
        assert (parsed.instruction, parsed.answer) == expected


@pytest.mark.parametrize(("instruction", "reason"), [
    ("What is the personality type of extraversion?", None),  # the words also belong to the template
    ("What is the personality type of personality type?", "unfilled_variable"),
    ("Explain the level of organization of the industry or field.", "unfilled_variable"),
    ("Explain <fi>x</fi>", "leftover_fi"),
    ("Why?", "instruction_too_short"),
])
def test_instruction_gates(instruction, reason):
    templates = {"personality": "What is the personality type of <fi>personality type</fi>?",
                 "level": "Explain the <fi>level of organization</fi> of the <fi>industry or field</fi>."}
    template = templates["level"] if "level" in instruction else templates["personality"]
    assert InstantiateStage._instruction_error(instruction, template) == reason
