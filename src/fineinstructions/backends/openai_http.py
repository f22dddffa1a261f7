"""Any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, SGLang, hosted APIs).

Requests of a batch run concurrently up to `max_concurrency`; each is retried with exponential
backoff and jitter on connection errors, timeouts, HTTP 429 and 5xx (honouring Retry-After). A request
that still fails becomes a Generation with `error` set, so one bad request never sinks the batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from fineinstructions.backends.base import (
    BackendStats,
    Conversation,
    Generation,
    SamplingParams,
    approximate_token_count,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAICompatibleBackend:
    """Chat completions over HTTP with bounded concurrency, retries and timeouts."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model_id = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = BackendStats()
        self._rng = random.Random(0)

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        if sampling.grammar and not getattr(self, "_warned_grammar", False):
            log.warning("%s: the OpenAI API has no GBNF grammar field; decoding is unconstrained", self.base_url)
            self._warned_grammar = True
        start = time.perf_counter()
        out = _run_sync(self._generate_all(list(conversations), sampling))
        self.stats.add(out, time.perf_counter() - start)
        return out

    async def _generate_all(self, conversations: list[Conversation], sampling: SamplingParams) -> list[Generation]:
        limit = asyncio.Semaphore(self.max_concurrency)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits) as client:

            async def one(conv: Conversation) -> Generation:
                async with limit:
                    return await self._request(client, conv, sampling)

            return list(await asyncio.gather(*(one(c) for c in conversations)))

    def _payload(self, conversation: Conversation, sampling: SamplingParams) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_id,
            "messages": conversation,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": sampling.seed,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        return payload

    async def _request(self, client: httpx.AsyncClient, conv: Conversation, sampling: SamplingParams) -> Generation:
        start = time.perf_counter()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                response = await client.post("/chat/completions", json=self._payload(conv, sampling))
                if response.status_code == 200:
                    return self._parse(response.json(), time.perf_counter() - start)
                last_error = f"http_{response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE_STATUS:
                    break
                retry_after = _retry_after(response)
            except (httpx.TransportError, ValueError, KeyError, IndexError, TypeError) as err:
                last_error = f"{type(err).__name__}: {err}"
            if attempt < self.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(retry_after if retry_after is not None else self._backoff(attempt))
        log.warning("request failed after %d attempt(s): %s", attempt + 1, last_error)
        return Generation("", error=last_error, seconds=time.perf_counter() - start)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return self._rng.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    @staticmethod
    def _parse(body: dict[str, Any], seconds: float) -> Generation:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        text = choice["message"].get("content") or ""
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", approximate_token_count(text))),
            finish_reason=choice.get("finish_reason") or "stop",
            seconds=seconds,
        )

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        # The chat API exposes no tokenizer; this is an approximation (documented in the README).
        return [approximate_token_count(t) for t in texts]

    def close(self) -> None:
        pass


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def _run_sync(coro):
    """Run a coroutine to completion, also when the caller already runs an event loop (e.g. Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
