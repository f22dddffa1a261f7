"""A configurable term-and-pattern moderation filter (a cheap first pass; see the limits in the term file)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from fineinstructions.text.normalize import normalize_text

DEFAULT_TERMS = "moderation_terms.txt"


def load_rules(text: str) -> list[tuple[str, re.Pattern[str]]]:
    """Parse a term file: `[category]` headers, plain terms, and `re:` regular expressions."""
    rules: list[tuple[str, re.Pattern[str]]] = []
    category = "flagged"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            category = line[1:-1].strip() or "flagged"
        elif line.startswith("re:"):
            rules.append((category, re.compile(line[3:].strip(), re.I)))
        else:
            rules.append((category, re.compile(r"(?<!\w)" + re.escape(line) + r"(?!\w)", re.I)))
    return rules


class ModerationFilter:
    """Flags texts that match a rule; the reason names the rule's category."""

    def __init__(self, terms_file: str | Path | None = None, extra_patterns: list[str] | None = None):
        if terms_file is None:
            text = resources.files(__package__).joinpath(DEFAULT_TERMS).read_text(encoding="utf-8")
        else:
            text = Path(terms_file).read_text(encoding="utf-8")
        self.rules = load_rules(text)
        self.rules += [("custom", re.compile(p, re.I)) for p in extra_patterns or []]

    def rejects(self, text: str) -> str | None:
        normalized = normalize_text(text)
        for category, pattern in self.rules:
            if pattern.search(normalized):
                return f"moderation_{category}"
        return None
