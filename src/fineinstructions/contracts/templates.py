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


_URL_FULL = re.compile(r"(?:https?://|www\.)\S+", re.I)
_QUOTED = re.compile(r"[\"“”'‘’`]([^\"“”'‘’`]{3,80})[\"“”'‘’`]")
_NUMBER = re.compile(r"\b\w*\d[\w.,:/-]*\b")
_PROPER_RUN = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)+)")
_STOPWORDS = frozenset((
    "a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "was", "were", "be", "been",
    "do", "does", "did", "how", "what", "why", "when", "where", "which", "who", "whom", "whose", "can",
    "could", "would", "should", "will", "shall", "may", "might", "must", "i", "me", "my", "we", "our", "you",
    "your", "it", "its", "this", "that", "these", "those", "there", "their", "they", "them", "he", "she",
    "his", "her", "with", "about", "from", "by", "as", "at", "into", "than", "then", "so", "if", "not", "no",
    "any", "some", "all", "more", "most", "very", "just", "also", "please", "tell", "give", "explain",
    "describe",
))


def query_specifics(query: str) -> set[str]:
    """Specific details of a query that a template must not keep: quoted strings, numbers, URLs,
    e-mail addresses and multi-word proper names (not at the start of a sentence)."""
    found = {m.group(1).strip() for m in _QUOTED.finditer(query)}
    found |= {m.group(0) for m in _URL_FULL.finditer(query)} | {m.group(0) for m in _EMAIL.finditer(query)}
    found |= {m.group(0) for m in _NUMBER.finditer(query) if any(c.isdigit() for c in m.group(0))}
    found |= {m.group(1) for m in _PROPER_RUN.finditer(query)}
    return {s for s in found if s}


def leaked_specifics(query: str, template: str) -> list[str]:
    """Specifics of the query that the template keeps outside its variables."""
    outside = FI_SPAN.sub(" ", template).lower()
    return sorted(s for s in query_specifics(query)
                  if re.search(r"(?<!\w)" + re.escape(s.lower()) + r"(?!\w)", outside))


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOPWORDS and len(w) > 1}


def intent_overlap(query: str, template: str) -> float:
    """Share of the template's own content words (outside variables) that the query uses.

    A template that keeps the query's intent reuses its wording around the variables; one that a model
    rewrote into another request does not. 1.0 when the template has no content words of its own.
    """
    own = content_words(FI_SPAN.sub(" ", template))
    if not own:
        return 1.0
    query_words = content_words(query)
    stems = {w[:5] for w in query_words}
    return sum(1 for w in own if w in query_words or w[:5] in stems) / len(own)


def query_template_error(query: str, template: str, min_intent_overlap: float = 0.5) -> str | None:
    """Checks that need the query: leftover specifics and intent kept."""
    if leaked_specifics(query, template):
        return "leaks_specifics"
    if intent_overlap(query, template) < min_intent_overlap:
        return "intent_changed"
    return None
