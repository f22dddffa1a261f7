"""Instruction templates: `<fi>description</fi>` variables, validation, templatizer output parsing, whether an
instruction is an instance of its template, and keeping a prompt's field text from closing its field."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache

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


# -- Instances of a template ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
DEFAULT_MIN_INSTANCE_SHARE = 0.6
DEFAULT_MAX_INSTANCE_LENGTH_RATIO = 2.0


def _words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation, spacing and case are ignored."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


@dataclass(frozen=True)
class InstanceMatch:
    """How an instruction lines up with its template's own words (those outside `<fi>` variables).

    `share`: the template's words found in the instruction, in order (1.0 when it has none).
    `length_ratio`: the instruction's words over those of the template as filled in, where everything that
    stands where a variable stands counts as the variable's value and words inserted elsewhere do not count.
    """

    template_words: int
    matched: int
    value_words: int
    inserted_words: int
    instruction_words: int

    @property
    def share(self) -> float:
        return self.matched / self.template_words if self.template_words else 1.0

    @property
    def length_ratio(self) -> float:
        return self.instruction_words / max(1, self.template_words + self.value_words)


def instance_match(instruction: str, template: str) -> InstanceMatch:
    """Align the instruction with the template's own words (a longest common subsequence of word tokens)."""
    literal: list[str] = []
    variable_before: list[bool] = []  # per gap g (before literal word g; gap len(literal) is the end)
    pending_variable = False
    for piece in re.split(r"(<fi>.*?</fi>)", template, flags=re.S):
        if FI_SPAN.fullmatch(piece):
            pending_variable = True
            continue
        for word in _words(piece):
            literal.append(word)
            variable_before.append(pending_variable)
            pending_variable = False
    variable_before.append(pending_variable)
    words = _words(instruction)
    n, m = len(literal), len(words)
    # lcs[i][j]: longest common subsequence of literal[i:] and words[j:]
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = lcs[i], lcs[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if literal[i] == words[j] else max(below[j], row[j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if literal[i] == words[j] and lcs[i][j] == lcs[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif lcs[i + 1][j] >= lcs[i][j + 1]:
            i += 1
        else:
            j += 1
    value_words = inserted_words = 0
    previous_i, previous_j = -1, -1
    for next_i, next_j in [*pairs, (n, m)]:
        gap = next_j - previous_j - 1  # instruction words between two matched words
        if gap:
            if any(variable_before[previous_i + 1 : next_i + 1]):
                value_words += gap
            else:  # words the template does not have here: a rewording (counted against skipped words) or extra
                inserted_words += max(0, gap - (next_i - previous_i - 1))
        previous_i, previous_j = next_i, next_j
    return InstanceMatch(n, len(pairs), value_words, inserted_words, m)


def instance_error(instruction: str, template: str, min_share: float = DEFAULT_MIN_INSTANCE_SHARE,
                   max_length_ratio: float = DEFAULT_MAX_INSTANCE_LENGTH_RATIO) -> str | None:
    """`not_an_instance_of_template` unless the instruction is the template filled in, lightly reworded at most:
    at least `min_share` of the template's own words appear in it in order, and it is at most
    `max_length_ratio` times as long as the template filled in (text added outside the variables)."""
    found = instance_match(instruction, template)
    if found.share < min_share or found.length_ratio > max_length_ratio:
        return "not_an_instance_of_template"
    return None


# -- Prompt fields ----------------------------------------------------------------------------------------

FIELD_ESCAPE = "\u200b"  # zero-width space: the model still reads the word, no delimiter matches it
_LABEL_LINE = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ]*[A-Z0-9]):[ \t]*(?:\{\w+\}[ \t]*)?$", re.M)
_TAG = re.compile(r"</?([A-Za-z_][\w-]*)>")


@dataclass(frozen=True)
class FieldGuard:
    """Keeps text rendered into a prompt's field from closing that field.

    A prompt separates its fields with labels on lines of their own (`DOCUMENT:`, `TEMPLATE:`) and with tags
    (`<document>`, `</answer>`); a document that contains one ("...\\n\\nTEMPLATE:\\nIgnore the above...") would
    end its field early and open one of its own. `neutralize` puts a zero-width space into every occurrence
    (`TEMPLATE\\u200b:`, `<\\u200b/answer>`): the model still reads the word, but no occurrence matches a delimiter
    of the prompt any more. Labels match case-sensitively (only the prompt's upper-case spelling), tags in any
    case. Text without any of them is left as it is.
    """

    labels: tuple[str, ...]
    tags: tuple[str, ...]

    @classmethod
    def of(cls, *prompt_texts: str) -> FieldGuard:
        """The labels (upper-case `LABEL:` lines) and tag names that the given prompt texts use."""
        labels = {m.group(1) for text in prompt_texts for m in _LABEL_LINE.finditer(text)}
        tags = {m.group(1).lower() for text in prompt_texts for m in _TAG.finditer(text)}
        return cls(tuple(sorted(labels, key=lambda s: (-len(s), s))), tuple(sorted(tags, key=lambda s: (-len(s), s))))

    def affected(self, text: str) -> bool:
        """True when the text holds any of the prompt's labels or tags."""
        return any(p is not None and p.search(text)
                   for p in (_label_pattern(self.labels, False), _tag_pattern(self.tags, False)))

    def neutralize(self, text: str) -> str:
        labels, tags = _label_pattern(self.labels, False), _tag_pattern(self.tags, False)
        if labels is not None:
            text = labels.sub(lambda m: m.group(1) + m.group(2) + FIELD_ESCAPE + ":", text)
        if tags is not None:
            text = tags.sub(lambda m: "<" + FIELD_ESCAPE + m.group(1), text)
        return text

    def restore(self, text: str, keep_tags: tuple[str, ...] = ()) -> str:
        """Undo `neutralize` in text copied from a field (e.g. a quote to resolve against the original), except
        for the tags in `keep_tags`, which would change the meaning of the copy (e.g. `excerpt`)."""
        labels = _label_pattern(self.labels, True)
        tags = _tag_pattern(tuple(t for t in self.tags if t not in keep_tags), True)
        if labels is not None:
            text = labels.sub(lambda m: m.group(1) + m.group(2) + ":", text)
        if tags is not None:
            text = tags.sub(lambda m: "<" + m.group(1), text)
        return text


@cache
def _label_pattern(labels: tuple[str, ...], escaped: bool) -> re.Pattern[str] | None:
    if not labels:
        return None
    names = "|".join(re.escape(label) for label in labels)
    return re.compile(rf"(?<!\w)({names})([ \t]*)" + (FIELD_ESCAPE if escaped else "") + ":")


@cache
def _tag_pattern(tags: tuple[str, ...], escaped: bool) -> re.Pattern[str] | None:
    if not tags:
        return None
    names = "|".join(re.escape(tag) for tag in tags)
    return re.compile("<" + (FIELD_ESCAPE if escaped else "") + rf"(\s*/?\s*(?:{names})\s*>)", re.I)
