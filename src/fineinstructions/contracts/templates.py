"""Instruction templates: `<fi>description</fi>` variables, validation, templatizer output parsing, whether an
instruction is an instance of its template, and keeping a prompt's field text from closing its field."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
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


def specific_variables(query: str, template: str) -> list[str]:
    """Variables whose "description" is a specific value of the query instead of a description of one.

    A variable is specific when its text, without a leading article, appears in the query word for word (case
    and spacing aside) and is not a generic description (`generic_description`: "programming language" copied
    from "which programming language is fastest?" is a description, "numpy" or "Windows" is a value); or when
    it holds one of the query's specifics (`query_specifics`: a number, quoted text, a URL, an e-mail address,
    a multi-word proper name), as "<fi>Windows 10</fi>" does.
    """
    query_text = " ".join(_words(query))
    specifics = [" ".join(_words(s)) for s in query_specifics(query)]
    found = []
    for description in template_variables(template):
        words = _words(description)
        while words and words[0] in _ARTICLES:
            words = words[1:]
        text = " ".join(words)
        if not text:
            continue
        copied = _contains_words(query_text, text) and not generic_description(description)
        if copied or any(s and _contains_words(" ".join(_words(description)), s) for s in specifics):
            found.append(description)
    return found


def _contains_words(text: str, words: str) -> bool:
    """True when the space-joined word tokens `words` occur in `text` as whole words."""
    return f" {words} " in f" {text} "


def query_template_error(query: str, template: str, min_intent_overlap: float = 0.5) -> str | None:
    """Checks that need the query: specifics kept outside the variables (`leaks_specifics`), a variable that is
    a specific value of the query rather than a description (`specific_variable`), and intent kept."""
    if leaked_specifics(query, template):
        return "leaks_specifics"
    if specific_variables(query, template):
        return "specific_variable"
    if intent_overlap(query, template) < min_intent_overlap:
        return "intent_changed"
    return None


# -- Generic descriptions ---------------------------------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})
# Determiners and qualifiers a placeholder copy may carry ("a specific programming language").
_PLACEHOLDER_FILLERS = _ARTICLES | frozenset({"some", "any", "your", "my", "our", "their", "one", "specific",
                                             "certain", "particular", "given"})
# Opening words that make a description generic ("some tool", "a specific date", "desired quality of ...").
_GENERIC_OPENERS = frozenset({"a", "an", "some", "any", "specific", "certain", "particular", "given", "relevant",
                              "desired", "related", "chosen", "another", "other", "different", "various",
                              "such", "someone", "something", "somebody"})
# Nouns that name a kind of thing wherever they stand in the description ("name of the person").
_GENERIC_NOUNS = frozenset({
    "type", "kind", "sort", "name", "thing", "item", "object", "topic", "subject", "concept", "idea", "person",
    "people", "individual", "someone", "something", "somebody", "place", "number", "amount", "quantity", "value",
    "task", "entity", "category", "example", "detail", "term", "word", "phrase", "placeholder", "variable",
    "element", "aspect", "feature", "attribute", "property", "specific", "certain", "particular",
})
# Head nouns that name a kind of thing unless the description is definite ("the immune system" names one).
_GENERIC_HEADS = _GENERIC_NOUNS | frozenset({
    "language", "system", "event", "country", "city", "region", "location", "area", "field", "domain", "industry",
    "level", "degree", "organization", "organisation", "company", "brand", "product", "service", "tool", "method",
    "technique", "approach", "process", "action", "activity", "issue", "problem", "situation", "condition",
    "context", "scenario", "goal", "purpose", "reason", "result", "outcome", "effect", "factor", "role",
    "relationship", "group", "team", "audience", "animal", "species", "plant", "food", "dish", "ingredient",
    "material", "substance", "profession", "occupation", "job", "skill", "hobby", "habit", "routine",
    "preference", "need", "genre", "style", "format", "file", "document", "text", "date", "time", "period", "year",
    "age", "size", "unit", "measure", "quality", "characteristic", "software", "device", "platform", "framework",
    "library", "package", "application", "app", "program", "game", "book", "song", "movie", "film", "work",
    "project", "question", "request", "part", "component", "resource", "source", "information", "data", "content",
    "medium", "mode", "environment", "version", "setting", "option", "parameter", "stage", "step", "phase",
    "state", "status", "pronoun", "adjective", "verb", "noun", "description", "expert", "destination",
    "landmark", "structure", "medication", "scientist", "companion", "behaviour", "behavior", "deadline",
    "phenomenon", "phenomena", "principle", "theory", "law", "rule", "policy", "strategy", "practice", "procedure",
    "mechanism", "function", "operation", "technology", "invention", "discovery", "discipline", "science",
    "sport", "cuisine", "beverage", "drink", "show", "series", "episode", "character", "author", "artist",
    "musician", "writer", "figure", "leader", "politician", "celebrity", "building", "monument", "feature",
    "river", "mountain", "continent", "nation", "province", "institution", "university", "school", "museum",
    "currency", "organism", "creature", "disease", "illness", "symptom", "treatment", "chemical", "compound",
    "mineral", "metal", "planet", "vehicle", "instrument", "tradition", "custom", "holiday", "festival",
    "religion", "belief", "emotion", "feeling", "trait", "query", "website", "model", "design", "pattern",
    "narrative", "plot", "theme", "occasion", "recipe", "exercise", "workout", "medicine", "drug",
})
# Words that end the head noun phrase ("name | of a package", "task | the function performs").
_PHRASE_ENDS = _ARTICLES | frozenset({"of", "for", "that", "which", "who", "whose", "in", "on", "to", "with",
                                      "from", "by", "about", "at", "as", "like", "and", "or", "e", "eg", "i", "ie"})


def _singular(word: str) -> str:
    """A light singular: "languages" -> "language", "activities" -> "activity"; short words and -ss/-us/-is kept."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def generic_description(description: str) -> bool:
    """True when a variable's description names a kind of thing ("programming language", "name of a person")
    rather than a thing itself ("Python interpreter", "numerical computations").

    A description with a digit, or with a capitalised word that is neither one of the generic words below nor
    a short acronym (up to 3 capitals: TV, SQL), names something concrete ("Python interpreter"). Otherwise it
    is generic when it offers alternatives ("industry or field", "x/y", "e.g.", "such as", "etc"), opens with
    a generic opener (a, an, some, any, specific, certain, particular, given, desired, ...: "a programming
    language"), holds a generic noun anywhere (type, kind, name, thing, item, topic, concept, person, place,
    number, task, ...: "name of a package"), or its head noun (the last word before "of", "for", "that", an
    article, ...) is a generic head (language, system, event, country, level, tool, show, phenomenon, ...:
    "programming language", "level of organization", "TV show"), the last only when the description does not
    open with "the" ("the immune system" names one system).
    """
    raw = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", description))
    words = [w.casefold() for w in raw]
    if not words:
        return False
    singular = [_singular(w) for w in words]
    known = _GENERIC_HEADS | _GENERIC_OPENERS | _PHRASE_ENDS | _STOPWORDS
    if any(any(c.isdigit() for c in w) for w in raw) or any(
            any(c.isupper() for c in w) and not (w.isupper() and len(w) <= 3)
            and w.casefold() not in known and _singular(w.casefold()) not in known for w in raw):
        return False
    lowered = " " + " ".join(words) + " "
    if " or " in lowered or "/" in description or " e g " in lowered or " such as " in lowered or " etc " in lowered:
        return True
    if words[0] in _GENERIC_OPENERS or any(w in _GENERIC_NOUNS for w in singular):
        return True
    start = 1 if words[0] in _ARTICLES else 0
    head = start
    while head + 1 < len(words) and words[head + 1] not in _PHRASE_ENDS:
        head += 1
    return words[0] != "the" and singular[head] in _GENERIC_HEADS


def placeholder_copy(value: str, description: str) -> bool:
    """True when `value` is the description itself, not a value for it: equal to it (case, punctuation, plural
    `-s`, articles and fillers such as "some", "your", "specific" aside) while the description is generic."""
    def key(text: str) -> list[str]:
        return [_singular(w) for w in _words(text) if w not in _PLACEHOLDER_FILLERS]
    return bool(key(value)) and key(value) == key(description) and generic_description(description)


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


def _template_slots(template: str) -> tuple[list[str], list[list[int]]]:
    """The template's own words (outside `<fi>`), and per gap g (before own word g; gap len(words) is the end)
    the indexes of the variables that stand there."""
    literal: list[str] = []
    slots: list[list[int]] = [[]]
    variable = 0
    for piece in re.split(r"(<fi>.*?</fi>)", template, flags=re.S):
        if FI_SPAN.fullmatch(piece):
            slots[-1].append(variable)
            variable += 1
            continue
        for word in _words(piece):
            literal.append(word)
            slots.append([])
    return literal, slots


def instance_match(instruction: str, template: str) -> InstanceMatch:
    """Align the instruction with the template's own words (a longest common subsequence of word tokens)."""
    literal, slots = _template_slots(template)
    variable_before = [bool(slot) for slot in slots]  # per gap g (before literal word g; gap len(literal) is the end)
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


@dataclass(frozen=True)
class VariableValue:
    """What an instruction puts where one or more of its template's variables stand.

    `variables`: indexes of the variables (more than one when no matched word of the template separates
    them); `text`: the instruction's text between the matched template words around them (NFKC, case-folded,
    punctuation kept), stripped of spacing and sentence punctuation; `before`: the instruction's word just
    before that text ("" at the start).
    """

    variables: tuple[int, ...]
    text: str
    before: str = ""


def variable_values(instruction: str, template: str) -> list[VariableValue]:
    """Align the instruction with the template and read off each variable's value.

    The alignment matches the template's own words to the instruction's in order, as many as possible; among
    those alignments it takes the one that leaves the fewest instruction words outside the variables' places
    (so in "Explain the <fi>level of organization</fi> of the <fi>industry</fi>" the "of" inside the first
    value is not taken for the template's "of"). The text between two consecutive matched words is the value
    of the variables that stand between them.
    """
    literal, slots = _template_slots(template)
    norm = unicodedata.normalize("NFKC", instruction).casefold()
    tokens = list(_WORD.finditer(norm))
    words = [t.group() for t in tokens]
    n, m = len(literal), len(words)
    weight = m + 1  # one matched word outweighs every word left outside the variables
    # best[i][j]: best score aligning literal[i:] with words[j:] (matches * weight - words outside variables)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        row = best[i]
        outside = 0 if slots[i] else 1
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            options = []
            if i < n:
                options.append(best[i + 1][j])
                if j < m and literal[i] == words[j]:
                    options.append(best[i + 1][j + 1] + weight)
            if j < m:
                options.append(row[j + 1] - outside)
            row[j] = max(options)
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and literal[i] == words[j] and best[i][j] == best[i + 1][j + 1] + weight:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif j < m and best[i][j] == best[i][j + 1] - (0 if slots[i] else 1):
            j += 1
        else:
            i += 1
    values = []
    previous_i, previous_j, previous_end = -1, -1, 0
    for next_i, next_j in [*pairs, (n, m)]:
        variables = tuple(v for g in range(previous_i + 1, next_i + 1) for v in slots[g])
        if variables:
            end = tokens[next_j].start() if next_j < m else len(norm)
            before = words[previous_j] if previous_j >= 0 else ""
            values.append(VariableValue(variables, norm[previous_end:end].strip(_VALUE_STRIP), before))
        previous_i, previous_j = next_i, next_j
        previous_end = tokens[next_j].end() if next_j < m else len(norm)
    return values


_ALNUM = re.compile(r"[^\W_]")
_VALUE_STRIP = " \t\r\n.,;:!?\"'“”‘’"
_BRACKETED = re.compile(r"^(?:\[[^\[\]]*\]|\{[^{}]*\}|<[^<>]*>)$")
# Words after which the kind itself is the natural value: "Which <fi>animal</fi> is named at the end?".
_QUESTION_HEADS = frozenset({"which", "what", "whichever", "whatever", "whose", "many", "much"})
_PLACEHOLDER_INNER = re.compile(r"^[^\W\d]+(?:[\s_'’-]+[^\W\d]+)*$")


def unfilled_variables(instruction: str, template: str, named: Mapping[str, str] | None = None) -> list[str]:
    """Descriptions of the template's variables that the instruction leaves unfilled.

    Each variable's value is read off the alignment of the instruction with the template (`variable_values`).
    A value is unfilled when it is missing (no word where the variable stands), still holds a `<fi>` tag, or is
    a bracketed placeholder ("[programming language]", "{name}", "<topic>": brackets, braces or angle brackets
    around words only). A value that copies a generic description (`placeholder_copy`: "programming language"
    for <fi>programming language</fi>) is unfilled unless it is the kind itself right after a question word
    (which, what, whose, how many/much: "Which animal is named at the end?") and, when the model `named` its
    values (the instantiate prompt's `<values>description = value</values>`), only if the model named another
    value for it that the instruction left out: a description copied in place of the value the model meant
    ("What are the requirements for a web framework?" while naming `web framework = Django`). A copy whose
    named value is the description itself, is in the instruction, or names nothing (yes, no, null) reads as
    the value ("Can I cancel a task?" for "Can I <fi>cancel a task</fi>?"), as a value equal to a description
    naming a concrete thing always does ("the Python interpreter" for <fi>Python interpreter</fi>).
    """
    descriptions = template_variables(template)
    instruction_words = f" {' '.join(_words(instruction))} "
    unfilled = []
    for value in variable_values(instruction, template):
        names = [descriptions[v] for v in value.variables]
        bracketed = _BRACKETED.match(value.text)
        copied = value.before not in _QUESTION_HEADS and (
            any(placeholder_copy(value.text, d) for d in names)
            or (len(names) > 1 and placeholder_copy(value.text, " ".join(names))))
        missing = not _ALNUM.search(value.text)
        if named is not None:
            meant = [named_value(named, d) for d in names]
            copied = copied and any(_left_out(v, d, instruction_words) for v, d in zip(meant, names, strict=True))
            # the model moved the value it named next to another word of the template ("Does Celery support
            # priority?" for "Does Celery <fi>task scheduler</fi> support <fi>priority</fi>?", naming Celery)
            missing = missing and not all(_stated(v, instruction_words) for v in meant)
        if (missing or has_fi_tags(value.text)
                or (bracketed and _PLACEHOLDER_INNER.match(value.text[1:-1].strip())) or copied):
            unfilled.extend(names)
    return unfilled


_NO_VALUE = frozenset({"", "yes", "no", "null", "none", "true", "false", "n a", "na", "unknown", "not applicable"})


def named_value(named: Mapping[str, str], description: str) -> str | None:
    """The value the model named for `description`: under the same words (case, punctuation, articles aside),
    else under a name that contains the description or is contained in it; None when it named none."""
    key = " ".join(w for w in _words(description) if w not in _ARTICLES)
    keys = {" ".join(w for w in _words(name) if w not in _ARTICLES): value for name, value in named.items()}
    if key in keys:
        return keys[key]
    near = [value for name, value in keys.items() if name and (f" {key} " in f" {name} " or f" {name} " in f" {key} ")]
    return near[0] if len(near) == 1 else None


def _real_value(value: str | None) -> bool:
    """True when a named value names something: not missing, not "yes"/"no"/"null", no `<fi>` tag."""
    return value is not None and not has_fi_tags(value) and " ".join(_words(value)) not in _NO_VALUE


def _stated(value: str | None, instruction_words: str) -> bool:
    """True when a real named value occurs, word for word, in the instruction (its words space-joined, padded)."""
    return _real_value(value) and f" {' '.join(_words(value or ''))} " in instruction_words


def _left_out(value: str | None, description: str, instruction_words: str) -> bool:
    """True when the model named a real value for `description` (not "yes"/"null", not the description, not its
    initials) that the instruction does not hold."""
    if not _real_value(value) or _stated(value, instruction_words):
        return False
    words = [w for w in _words(value or "") if w not in _PLACEHOLDER_FILLERS]
    if [_singular(w) for w in words] == [_singular(w) for w in _words(description) if w not in _PLACEHOLDER_FILLERS]:
        return False
    initials = "".join(w[0] for w in _words(description))
    return not (len(words) == 1 and len(initials) > 1 and words[0] == initials)  # "CMS": content management system


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
