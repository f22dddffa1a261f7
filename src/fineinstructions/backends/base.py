"""One interface for every text-generation engine: a batch of chat requests in, texts with token counts out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from fineinstructions.hashing import json_hash

Message = dict[str, str]
Conversation = list[Message]


# Fields added to SamplingParams after request caches were filled: left out of the fingerprint while None, so
# a request that does not use them keeps its cache key.
_LATER_SAMPLING_FIELDS = ("json_schema",)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by all backends.

    Structured outputs: `grammar` (GBNF) is honoured by llama.cpp (in-process and its servers) and vLLM;
    `json_schema` (a JSON schema as `schema_text`) by llama.cpp (compiled to GBNF), llama.cpp servers, vLLM and
    OpenAI-compatible servers configured with `send_json_schema`. With both set, the grammar wins where a
    backend takes grammars. The transformers engine and the fake backend ignore both: their output is parsed as
    it comes, as is any backend's when it honours neither.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF the output must follow
    json_schema: str | None = None  # a JSON schema (schema_text) the output must validate against

    def fingerprint(self) -> str:
        data = asdict(self)
        for name in _LATER_SAMPLING_FIELDS:
            if data[name] is None:
                del data[name]
        return json_hash(data)

    def schema(self) -> dict[str, Any] | None:
        """`json_schema` parsed (None when unset)."""
        return json.loads(self.json_schema) if self.json_schema else None


def schema_text(schema: Mapping[str, Any]) -> str:
    """A JSON schema as compact JSON text, keys in their given order (the order properties are generated in),
    so SamplingParams stays hashable and one schema always gives one fingerprint."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Generation:
    """One completion. `error` is set (and `text` empty) when the request failed after its retries."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


# Failures caused by the request itself: the same request fails again, so a rerun does not retry it.
_ROW_CAUSED = re.compile(r"^(prompt_too_long|http_(400|413|422)\b|engine_error: prompt of )|exceed context window")


def is_engine_failure(error: str | None) -> bool:
    """Whether a failed request failed because of the engine or service (down, overloaded, timed out,
    unauthorised), not because of the request (too long, malformed): only those are worth a retry later."""
    return error is not None and not _ROW_CAUSED.search(error)


@dataclass
class BackendStats:
    requests: int = 0
    failures: int = 0
    engine_failures: int = 0  # failures a later retry may resolve (is_engine_failure)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, generations: Sequence[Generation], seconds: float) -> None:
        self.requests += len(generations)
        self.failures += sum(not g.ok for g in generations)
        self.engine_failures += sum(is_engine_failure(g.error) for g in generations)
        self.prompt_tokens += sum(g.prompt_tokens for g in generations)
        self.completion_tokens += sum(g.completion_tokens for g in generations)
        self.seconds += seconds


@runtime_checkable
class Backend(Protocol):
    """A text-generation engine. Stages only ever call `generate` with a whole batch."""

    model_id: str
    stats: BackendStats

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        """Complete every conversation; the result has one Generation per input, in order."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of plain texts under this backend's tokenizer (or a stated approximation)."""
        ...

    def close(self) -> None: ...


def approximate_token_count(text: str) -> int:
    """Rough token count (~4 characters a token) for backends that expose no tokenizer."""
    return max(1, (len(text) + 3) // 4) if text else 0
