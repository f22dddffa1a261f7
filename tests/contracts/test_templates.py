from __future__ import annotations

import pytest

from fineinstructions.contracts.templates import (
    first_json_object,
    has_fi_tags,
    parse_templatizer_output,
    template_error,
    template_variables,
)


def test_variables_in_order():
    t = "How do I install <fi>name of a software package</fi> on <fi>operating system</fi>?"
    assert template_variables(t) == ["name of a software package", "operating system"]
    assert template_error(t) is None


@pytest.mark.parametrize(("template", "reason"), [
    ("", "empty_template"),
    ("What is the capital of France?", "no_variables"),
    ("What is <fi>a <fi>nested</fi> thing</fi>?", "nested_fi"),
    ("What is <fi>unclosed?", "unclosed_fi"),
    ("What is </fi> this <fi>x</fi>?", "unbalanced_fi"),
    ("What is <fi></fi> here?", "empty_variable"),
    ("What is < fi >thing</fi>?", "malformed_fi_tag"),
    ("Summarise https://example.org for <fi>audience</fi>", "leaks_specifics"),
    ("Email <fi>person</fi> at jane.doe@example.org", "leaks_specifics"),
])
def test_invalid_templates_have_named_reasons(template, reason):
    assert template_error(template) == reason


def test_parse_output_with_code_fence():
    text = '```json\n{"template": "Who was <fi>notable person</fi>?", ' \
           '"compatible_document_description": "A biography of a notable person and their life."}\n```'
    parsed = parse_templatizer_output(text)
    assert not isinstance(parsed, str)
    assert parsed.variables == ["notable person"]


@pytest.mark.parametrize(("text", "reason"), [
    ("I cannot help with that.", "unparseable_json"),
    ('{"template": 3, "compatible_document_description": "x y z w"}', "missing_template"),
    ('{"template": "What is <fi>x</fi>?"}', "missing_description"),
    ('{"template": "What is <fi>x</fi>?", "compatible_document_description": "docs"}', "short_description"),
    ('{"template": "What is love?", "compatible_document_description": "A text about love and people."}',
     "no_variables"),
])
def test_parse_output_failures(text, reason):
    assert parse_templatizer_output(text) == reason


def test_first_json_object_skips_prose_and_broken_objects():
    assert first_json_object('Sure! {broken {"a": 1} trailing') == {"a": 1}
    assert first_json_object("[1, 2]") is None


def test_has_fi_tags():
    assert has_fi_tags("Tell me about <fi>topic</fi>")
    assert not has_fi_tags("Tell me about Paris")
