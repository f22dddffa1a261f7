"""Instruction templates: `<fi>description</fi>` variables, validation, and templatizer output parsing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

FI_SPAN = re.compile(r"<fi>(.*?)</fi>", re.S)
_FI_TAG = re.compile(r"</?\s*fi\s*>", re.I)
_URL = re.compile(r"https?://|www\.", re.I)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$", re.M)

MIN_DESCRIPTION_WORDS = 4


def template_variables(template: str) -> list[str]:
    """Descriptions of the `<fi>` variables, in order of appearance."""
    return [m.strip() for m in FI_SPAN.findall(template)]


def fi_structure_error(text: str) -> str | None:
    """Why the `<fi>` tags of `text` are not well formed (None when they are)."""
    depth = 0
    for tag in _FI_TAG.finditer(text):
        raw = tag.group(0)
        if raw not in ("<fi>", "</fi>"):
            return "malformed_fi_tag"
        if raw == "<fi>":
            depth += 1
            if depth > 1:
                return "nested_fi"
        else:
            depth -= 1
            if depth < 0:
                return "unbalanced_fi"
    return "unclosed_fi" if depth else None


def has_fi_tags(text: str) -> bool:
    """True when any `<fi>`-like tag is left in the text (e.g. an instruction that was not filled in)."""
    return bool(_FI_TAG.search(text))


def template_error(template: str) -> str | None:
    """Validate a template; return a named reason when it is invalid, None when it is valid."""
    if not template.strip():
        return "empty_template"
    structure = fi_structure_error(template)
    if structure:
        return structure
    variables = template_variables(template)
    if not variables:
        return "no_variables"
    if any(not v for v in variables):
        return "empty_variable"
    outside = FI_SPAN.sub(" ", template)
    if _URL.search(outside) or _EMAIL.search(outside):
        return "leaks_specifics"
    if len(outside.split()) < 1:
        return "only_variables"
    return None


@dataclass(frozen=True)
class ParsedTemplate:
    template: str
    compatible_document_description: str
    variables: list[str]


def strip_fences(text: str) -> str:
    return _FENCE.sub("", text.strip()).strip()


def first_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (after stripping code fences), or None."""
    text = strip_fences(text)
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def parse_templatizer_output(text: str) -> ParsedTemplate | str:
    """Parse `{"template", "compatible_document_description"}`; return the template or a named reason."""
    obj = first_json_object(text)
    if obj is None:
        return "unparseable_json"
    template = obj.get("template")
    description = obj.get("compatible_document_description")
    if not isinstance(template, str):
        return "missing_template"
    if not isinstance(description, str):
        return "missing_description"
    template = template.strip()
    description = description.strip()
    error = template_error(template)
    if error:
        return error
    if has_fi_tags(description):
        description = FI_SPAN.sub(lambda m: m.group(1), description)
    if len(description.split()) < MIN_DESCRIPTION_WORDS:
        return "short_description"
    return ParsedTemplate(template, description, template_variables(template))
