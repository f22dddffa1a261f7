"""Unicode and whitespace normalisation, and the keys that exact deduplication compares."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_CONTROL = {"Cc", "Cf", "Co", "Cs"}
_LINE_BREAKS = str.maketrans("\n\t\r", "   ")


def normalize_text(text: str) -> str:
    """NFKC, control characters removed (newlines and tabs kept as spaces), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_LINE_BREAKS)
    if not text.isprintable():  # printable text holds no control character: skip the per-character pass
        text = "".join(ch for ch in text if unicodedata.category(ch) not in _CONTROL)
    return _WS.sub(" ", text).strip()


def dedup_key(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: texts equal under this key are duplicates."""
    text = normalize_text(text).lower().replace("'", "").replace("\u2019", "")
    return _WS.sub(" ", _PUNCT.sub(" ", text)).strip()


def words(text: str) -> list[str]:
    return dedup_key(text).split()


def looks_binary(text: str) -> bool:
    """NUL bytes or mostly non-printable characters (e.g. a file read as text by mistake)."""
    if "\x00" in text or "\ufffd" * 3 in text:
        return True
    sample = text[:2000]
    bad = sum(1 for ch in sample if unicodedata.category(ch) in _CONTROL and ch not in "\n\t\r")
    return bool(sample) and bad / len(sample) > 0.1


_MARKUP = re.compile(r"<[^>]*>|&[#\w]+;|\{\{.*?\}\}|\[\[|\]\]", re.DOTALL)
_WORD = re.compile(r"\w+", re.UNICODE)


def visible_word_count(text: str) -> int:
    """Words left once HTML/XML tags, entities and wiki braces are removed."""
    return len(_WORD.findall(_MARKUP.sub(" ", text)))
