"""Language identification with py3langid (its model ships inside the package, so it works offline)."""

from __future__ import annotations

from functools import cache

from fineinstructions.text.normalize import words


@cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageFilter:
    """Keep texts in `languages` (ISO 639-1 codes).

    Character n-gram models guess poorly on a handful of words, so texts shorter than `min_words`
    are kept when they are plain ASCII and English is allowed; a text is rejected only when the
    identified language is not allowed with probability >= `min_confidence`.
    """

    def __init__(self, languages: list[str] | tuple[str, ...] = ("en",), min_confidence: float = 0.7,
                 min_words: int = 4):
        self.languages = set(languages)
        self.min_confidence = min_confidence
        self.min_words = min_words

    def language_of(self, text: str) -> tuple[str, float]:
        language, probability = _identifier().classify(text)
        return str(language), float(probability)

    def rejects(self, text: str) -> str | None:
        """`None` when the text may stay, else a reason naming the language found."""
        if not self.languages:
            return None
        if len(words(text)) < self.min_words and text.isascii() and "en" in self.languages:
            return None
        language, probability = self.language_of(text)
        if language in self.languages or probability < self.min_confidence:
            return None
        return f"language_{language}"
