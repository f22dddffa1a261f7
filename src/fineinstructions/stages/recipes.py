"""What the baseline recipes (`wrap`, `nemotron_qa`, `ipt`) share: documents cut into chunks of at most N tokens,
one model request per chunk, the reply checked, and the training text written with its token counts.

Each recipe is a stage Document -> SyntheticText with its own config section and versioned prompts; it
supplies `conversation` (the request for one chunk) and `build` (the reply parsed into training text, or a
named rejection). The chunking, the request, the generic rejections (`backend_error`, `truncated_output`,
`empty_output`) and the token counting live here.
"""

from __future__ import annotations

import random
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fineinstructions.backends.base import Backend, Conversation, Generation, SamplingParams
from fineinstructions.records import Document, SyntheticText
from fineinstructions.stages.base import Rejected, Stage, StageResult

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document a recipe sends to the model."""

    document: Document
    index: int
    text: str
    tokens: int


@dataclass(frozen=True)
class Built:
    """A reply turned into training text: what the recipe writes, and how many items (QA pairs) it holds."""

    text: str
    items: int = 1
    style: str = ""


def token_chunks(documents: Sequence[Document], count_tokens: Callable[[Sequence[str]], list[int]],
                 max_tokens: int, max_chunks: int | None = None) -> list[Chunk]:
    """Each document cut at sentence ends (and line breaks) into chunks of at most `max_tokens` tokens, counted by
    the engine's tokenizer in one call; a sentence longer than that is cut between words."""
    pieces = [[p for p in _SENTENCE_END.split(d.text.strip()) if p.strip()] for d in documents]
    counts = iter(count_tokens([p for doc in pieces for p in doc]))
    chunks: list[Chunk] = []
    for document, sentences in zip(documents, pieces, strict=True):
        current: list[str] = []
        tokens = index = 0
        for sentence, n in zip(sentences, counts, strict=False):
            for part, m in _split_long(sentence, n, max_tokens):
                if current and tokens + m > max_tokens:
                    chunks.append(Chunk(document, index, " ".join(current), tokens))
                    current, tokens, index = [], 0, index + 1
                current.append(part)
                tokens += m
        if current:
            chunks.append(Chunk(document, index, " ".join(current), tokens))
    if max_chunks is not None:
        chunks = [c for c in chunks if c.index < max_chunks]
    return chunks


def _split_long(sentence: str, tokens: int, max_tokens: int) -> list[tuple[str, int]]:
    """A sentence of more than `max_tokens` tokens as word runs of about `max_tokens` (tokens estimated pro rata)."""
    if tokens <= max_tokens:
        return [(sentence, tokens)]
    words = sentence.split()
    per_word = tokens / max(1, len(words))
    step = max(1, int(max_tokens / per_word))
    return [(" ".join(words[i : i + step]), round(len(words[i : i + step]) * per_word))
            for i in range(0, len(words), step)]


def seeded(seed: int, *keys: object) -> random.Random:
    """A random generator drawn from the run's seed and `keys` (e.g. a document id): the same on every rerun."""
    return random.Random(":".join(str(k) for k in (seed, *keys)))


class RecipeStage(Stage[Document, SyntheticText]):
    """A baseline recipe: documents -> chunks -> one request each -> training texts, rejections named."""

    input_type = Document
    output_type = SyntheticText
    holds_model = True
    recipe: ClassVar[str]
    backend: Backend

    def __init__(self, backend: Backend, chunk_tokens: int, max_tokens: int, temperature: float = 0.0,
                 seed: int = 0, config_fingerprint: str = "", max_chunks: int | None = None):
        self.backend = backend
        self.chunk_tokens = chunk_tokens
        self.max_chunks = max_chunks
        self.seed = seed
        self.sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
        self.config_fingerprint = config_fingerprint

    @abstractmethod
    def conversation(self, chunk: Chunk) -> tuple[Conversation, str]:
        """The request for one chunk, and the version of the prompt it used."""

    @abstractmethod
    def build(self, chunk: Chunk, generation: Generation, counters: dict[str, float]) -> Built | str:
        """The training text made of a finished reply, or the named reason it is rejected."""

    def combine(self, texts: list[tuple[Chunk, Built, Generation, str]],
                document_tokens: dict[str, int]) -> list[tuple[Chunk, Built, Generation, str]]:
        """Recipes that write one text per document (not per chunk) join a document's chunks here
        (`document_tokens`: each document's tokens, all its chunks together)."""
        return texts

    def process(self, batch: Sequence[Document]) -> StageResult[SyntheticText]:
        chunks = token_chunks(batch, self.backend.count_tokens, self.chunk_tokens, self.max_chunks)
        requests = [self.conversation(chunk) for chunk in chunks]
        generations = self.backend.generate([c for c, _ in requests], self.sampling) if requests else []
        counters: dict[str, float] = {"chunks": float(len(chunks))}
        built: list[tuple[Chunk, Built, Generation, str]] = []
        rejected: list[Rejected] = []
        for chunk, (_, version), generation in zip(chunks, requests, generations, strict=True):
            result = self._checked(chunk, generation, counters)
            if isinstance(result, str):
                rejected.append(Rejected({"document_id": chunk.document.document_id, "chunk": chunk.index,
                                          "reply": generation.text[:2000]}, result))
            else:
                built.append((chunk, result, generation, version))
        document_tokens: dict[str, int] = {}
        for chunk in chunks:
            key = chunk.document.document_id
            document_tokens[key] = document_tokens.get(key, 0) + chunk.tokens
        built = self.combine(built, document_tokens)
        counts = self.backend.count_tokens([b.text for _, b, _, _ in built]) if built else []
        records = [
            SyntheticText(document_id=chunk.document.document_id, recipe=self.recipe, chunk=chunk.index,
                          style=b.style, source_text=chunk.text, text=b.text, items=b.items, token_count=n,
                          source_token_count=chunk.tokens, completion_tokens=generation.completion_tokens,
                          model=self.backend.model_id, prompt_version=version,
                          config_fingerprint=self.config_fingerprint)
            for (chunk, b, generation, version), n in zip(built, counts, strict=True)
        ]
        return StageResult(records, rejected, counters)

    def _checked(self, chunk: Chunk, generation: Generation, counters: dict[str, float]) -> Built | str:
        if not generation.ok:
            return f"backend_error: {generation.error}"
        if not generation.text.strip():
            return "empty_output"
        return self.build(chunk, generation, counters)

    def metrics(self, result: StageResult[SyntheticText]) -> dict[str, Any]:
        return {"synthetic_tokens": float(sum(r.token_count for r in result.records)),
                "source_tokens": float(sum(r.source_token_count for r in result.records)),
                "items": float(sum(r.items for r in result.records))}
