"""Benchmark decontamination: drop texts that share a word n-gram with a user-supplied evaluation set."""

from __future__ import annotations

from collections.abc import Iterable

from fineinstructions.text.normalize import words


def ngrams(tokens: list[str], n: int) -> set[str]:
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class Decontaminator:
    """Holds the n-grams of evaluation texts; a text is contaminated when it shares one of them.

    Texts shorter than n words (on either side) are compared whole after normalisation, so a short
    benchmark question copied verbatim is still caught.
    """

    def __init__(self, eval_texts: Iterable[str], n: int = 8):
        self.n = n
        self.grams: set[str] = set()
        self.short: set[str] = set()
        self.size = 0
        for text in eval_texts:
            tokens = words(text)
            if not tokens:
                continue
            self.size += 1
            if len(tokens) < n:
                self.short.add(" ".join(tokens))
            else:
                self.grams |= ngrams(tokens, n)

    def contaminated(self, text: str) -> bool:
        tokens = words(text)
        if " ".join(tokens) in self.short:
            return True
        return len(tokens) >= self.n and bool(ngrams(tokens, self.n) & self.grams)
