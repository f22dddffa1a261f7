"""A small deterministic backend for unit tests of parsing and control flow (never a substitute for a model)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fineinstructions.backends.base import BackendStats, Conversation, Generation, SamplingParams

Responder = Callable[[Conversation], str]


class FakeBackend:
    """Answers each conversation with `responder(conversation)`; counts whitespace tokens."""

    def __init__(self, responder: Responder, model_id: str = "fake"):
        self.responder = responder
        self.model_id = model_id
        self.stats = BackendStats()
        self.calls: list[Conversation] = []

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        start = time.perf_counter()
        out = []
        for conv in conversations:
            self.calls.append(conv)
            text = self.responder(conv)
            prompt = " ".join(m["content"] for m in conv)
            out.append(Generation(text, len(prompt.split()), len(text.split())))
        self.stats.add(out, time.perf_counter() - start)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def close(self) -> None:
        pass
