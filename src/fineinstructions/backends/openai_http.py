"""Any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, SGLang, hosted APIs).

Requests of a batch run concurrently under an adaptive limit (`AdaptiveLimiter`: up to `max_concurrency`
in flight, halved when the server signals overload). Each request is retried with exponential backoff and
full jitter on connection errors, timeouts, HTTP 429 and 5xx (honouring Retry-After, capped) and on a 200
whose body is not a usable completion. `timeout_s` bounds each read; an attempt as a whole (connect, headers,
the whole body) also has a deadline and its body a size cap, so a server trickling bytes cannot hold a batch:
missing either is a retryable fault ("deadline_exceeded", "response_too_large"). A circuit breaker stops
sending to a server that keeps failing: while it is open, attempts are turned away without a network call
and wait for its next probe. A request that still fails becomes a Generation with `error` set
("<reason>: <detail>"), so one bad request never sinks the batch. Counts of retries, throttled responses,
deadlines, oversized bodies, breaker opens and the current limit are in `stats.extra`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from fineinstructions.backends.base import (
    BackendStats,
    Conversation,
    Generation,
    SamplingParams,
    approximate_token_count,
)
from fineinstructions.backends.resilience import AdaptiveLimiter, BreakerState, CircuitBreaker, Signal

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_SERVER_FAILURE_STATUS = {408, 500, 502, 503, 504}  # count against the breaker; other answers show a live server
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
DEADLINE_TIMEOUTS = 4  # request_deadline_s=None: this many timeout_s (connect, write, first byte, body)
_ERROR_BODY_BYTES = 4096  # of a non-200 body: enough for the error text, the rest is not read


class InvalidResponse(ValueError):
    """A 200 whose body is not a chat completion (truncated, not JSON, no choices)."""


class ResponseTooLarge(ValueError):
    """A 200 whose body is larger than `max_response_bytes`."""


@dataclass
class _Outcome:
    """What one attempt observed."""

    generation: Generation | None = None
    error: str = ""
    signal: Signal = Signal.NEUTRAL
    server_ok: bool | None = None  # the breaker's verdict: True alive, False failing, None no verdict
    retryable: bool = True
    retry_after: float | None = None


class OpenAICompatibleBackend:
    """Chat completions over HTTP with an adaptive concurrency limit, retries, timeouts and a circuit breaker."""

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
        *,
        adaptive_concurrency: bool = True,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 5.0,
        max_retry_after_s: float = 60.0,
        request_deadline_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        send_grammar: bool = False,
        send_json_schema: bool = False,
        engine_alive: Callable[[], bool] | None = None,
    ):
        """`request_deadline_s`: wall-clock limit of one attempt, body included (None: 4 x `timeout_s`);
        `max_response_bytes`: the largest (decoded) 200 body read; `max_retry_after_s`: cap on a server's
        Retry-After. `send_grammar`: the server speaks llama.cpp's dialect: `SamplingParams.grammar` goes as the
        request's `grammar` field and `json_schema` as both `json_schema` (llama.cpp's llama-server) and
        `response_format: {"type": "json_object", "schema": ...}` (llama-cpp-python's server).
        `send_json_schema`: the server takes OpenAI's structured outputs (`response_format` of type
        `json_schema`, strict; vLLM, SGLang and OpenAI's own API do): off by default, since a server without them
        may refuse the request; off, a schema is not sent and the reply is parsed as it comes.
        `engine_alive`: a check of a local server process; when it says the engine died, a request that lost
        its connection fails at once ("engine_dead") instead of retrying, so the owner can restart the engine."""
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
        self.adaptive_concurrency = adaptive_concurrency
        self.max_retry_after_s = max_retry_after_s
        self.request_deadline_s = DEADLINE_TIMEOUTS * timeout_s if request_deadline_s is None else request_deadline_s
        self.max_response_bytes = max_response_bytes
        self.send_grammar = send_grammar
        self.send_json_schema = send_json_schema
        self.engine_alive = engine_alive
        self.limiter = AdaptiveLimiter(max_concurrency)
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown_s)
        self.stats = BackendStats()
        self._rng = random.Random(0)
        self._probe_settled: asyncio.Event | None = None

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        self._warn_unsent(sampling)
        start = time.perf_counter()
        out = _run_sync(self._generate_all(list(conversations), sampling))
        self.stats.add(out, time.perf_counter() - start)
        self.stats.extra.update(self.limiter.stats() | self.breaker.stats())
        return out

    async def _generate_all(self, conversations: list[Conversation], sampling: SamplingParams) -> list[Generation]:
        self._probe_settled = asyncio.Event()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._request(client, c, sampling) for c in conversations)))

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
        payload.update(self._constraint(sampling))
        return payload

    def _constraint(self, sampling: SamplingParams) -> dict[str, Any]:
        """The fields that constrain the output: the grammar, else the JSON schema, as this server takes them."""
        if sampling.grammar and self.send_grammar:
            return {"grammar": sampling.grammar}
        schema = sampling.schema()
        if schema is None:
            return {}
        if self.send_grammar:
            return {"json_schema": schema, "response_format": {"type": "json_object", "schema": schema}}
        if self.send_json_schema:
            title = str(schema.get("title") or "reply")
            name = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "_" for c in title)[:64]
            return {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": name, "schema": schema, "strict": True}}}
        return {}

    def _warn_unsent(self, sampling: SamplingParams) -> None:
        """Say once per backend when a constraint asked for cannot be sent (decoding is then unconstrained)."""
        sent = self._constraint(sampling)
        if sampling.grammar and not self.send_grammar and not sent and not getattr(self, "_warned_grammar", False):
            log.warning("%s: the OpenAI API has no GBNF grammar field; decoding is unconstrained", self.base_url)
            self._warned_grammar = True
        if sampling.json_schema and not sent and not getattr(self, "_warned_schema", False):
            log.warning("%s: JSON schema not sent (send_json_schema is off for this server); decoding is "
                        "unconstrained and the reply is parsed as it comes", self.base_url)
            self._warned_schema = True

    async def _request(self, client: httpx.AsyncClient, conv: Conversation, sampling: SamplingParams) -> Generation:
        start = time.perf_counter()
        payload = self._payload(conv, sampling)
        last_error = ""
        attempt = 0
        while True:
            permit = await self.limiter.acquire()
            if not self.breaker.allow():
                self.limiter.release(permit, Signal.NEUTRAL)
                if self.breaker.probing:  # another request is probing: its verdict decides, no attempt is used
                    await self._wait_for_probe()
                    continue
                if last_error and "(then turned away" not in last_error:
                    last_error += " (then turned away: circuit open)"
                elif not last_error:
                    last_error = (f"circuit_open: {self.breaker.consecutive_failures} consecutive failures, "
                                  f"last: {self.breaker.last_error}")
                delay = max(self._backoff(attempt), self.breaker.retry_in() + self._rng.uniform(0, self.backoff_s))
            else:
                outcome = await self._guarded_attempt(client, payload, permit)
                if outcome.generation is not None:
                    outcome.generation.seconds = time.perf_counter() - start
                    return outcome.generation
                last_error = outcome.error
                if not outcome.retryable:
                    break
                delay = self._backoff(attempt)
                if outcome.retry_after is not None:
                    delay = outcome.retry_after + self._rng.uniform(0, self.backoff_s)
            if attempt >= self.max_retries:
                break
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)
        # A dead local engine is its owner's to restart (LlamaServerBackend): not worth a warning per request.
        level = logging.INFO if last_error.startswith("engine_dead") else logging.WARNING
        log.log(level, "request failed after %d attempt(s): %s", attempt + 1, last_error)
        self._count("failed." + last_error.split(":", 1)[0].split(" ", 1)[0])
        return Generation("", error=last_error, seconds=time.perf_counter() - start)

    async def _guarded_attempt(self, client: httpx.AsyncClient, payload: dict[str, Any], permit: int) -> _Outcome:
        """One network attempt, with its verdict handed to the limiter and the breaker (also when cancelled)."""
        probe = self.breaker.state is BreakerState.HALF_OPEN
        outcome = _Outcome(server_ok=None)
        try:
            outcome = await self._attempt(client, payload)
        finally:
            signal = outcome.signal if self.adaptive_concurrency or outcome.signal is Signal.SUCCESS else Signal.NEUTRAL
            self.limiter.release(permit, signal)
            if outcome.server_ok is True:
                self.breaker.record_success()
            elif outcome.server_ok is False:
                self.breaker.record_failure(outcome.error[:200])
            elif probe:
                self.breaker.release_probe()
            if probe:
                self._settle_probe()
        return outcome

    async def _attempt(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> _Outcome:
        self._count("attempts")
        try:
            async with asyncio.timeout(self.request_deadline_s):
                response, body = await self._exchange(client, payload)
        except TimeoutError:  # the deadline, not a per-read timeout (those are httpx.TimeoutException)
            self._count("deadline_exceeded")
            return _Outcome(error=f"deadline_exceeded: no complete response within {self.request_deadline_s:g} s",
                            signal=Signal.OVERLOAD, server_ok=False)
        except ResponseTooLarge as err:
            self._count("response_too_large")
            return _Outcome(error=f"response_too_large: {err}", server_ok=False)  # a bad answer, not overload
        except httpx.TransportError as err:
            error = f"{type(err).__name__}: {err}"
            if self.engine_alive is not None and not self.engine_alive():
                return _Outcome(error=f"engine_dead: {error}", retryable=False)
            if isinstance(err, httpx.TimeoutException):
                self._count("timeouts")
                return _Outcome(error=error, signal=Signal.OVERLOAD, server_ok=False)
            self._count("transport_errors")
            # A refused connection says the server is not there, not that it is overloaded; a connection that
            # was reset or dropped mid-request is how overloaded servers and their proxies shed load.
            overload = isinstance(err, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError)
            return _Outcome(error=error, signal=Signal.OVERLOAD if overload else Signal.NEUTRAL, server_ok=False)
        except httpx.RequestError as err:  # e.g. a body that does not decode
            self._count("invalid_responses")
            return _Outcome(error=f"invalid_response: {type(err).__name__}: {err}"[:300], server_ok=False)
        status = response.status_code
        if status == 200:
            try:
                return _Outcome(generation=self._parse(json.loads(body), 0.0), signal=Signal.SUCCESS, server_ok=True)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
                self._count("invalid_responses")
                return _Outcome(error=f"invalid_response: {type(err).__name__}: {err}"[:300], server_ok=False)
        error = f"http_{status}: {body.decode('utf-8', errors='replace')[:200]}"
        if status == 429:
            self._count("throttled")
        elif status >= 500:
            self._count("server_errors")
        return _Outcome(
            error=error,
            signal=Signal.OVERLOAD if status == 429 or status in _SERVER_FAILURE_STATUS else Signal.NEUTRAL,
            server_ok=status not in _SERVER_FAILURE_STATUS,
            retryable=status in RETRYABLE_STATUS,
            retry_after=_retry_after(response, self.max_retry_after_s),
        )

    async def _exchange(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[httpx.Response, bytes]:
        """Send one request and read its body: all of a 200 (up to `max_response_bytes`), the start of others."""
        async with client.stream("POST", "/chat/completions", json=payload) as response:
            ok = response.status_code == 200
            limit = self.max_response_bytes if ok else _ERROR_BODY_BYTES
            declared = response.headers.get("content-length", "")
            if ok and declared.isdigit() and int(declared) > limit and "content-encoding" not in response.headers:
                raise ResponseTooLarge(f"content-length {declared} > max_response_bytes {limit}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    if ok:
                        raise ResponseTooLarge(f"body over max_response_bytes {limit}")
                    chunks.append(chunk[: len(chunk) - (size - limit)])
                    break
                chunks.append(chunk)
            return response, b"".join(chunks)

    async def _wait_for_probe(self) -> None:
        event = self._probe_settled
        if event is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=self.request_deadline_s + 1.0)

    def _settle_probe(self) -> None:
        """Wake the requests waiting for a probe's verdict."""
        if self._probe_settled is not None:
            self._probe_settled.set()
            self._probe_settled = asyncio.Event()

    def _count(self, key: str, n: float = 1.0) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0.0) + n

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return self._rng.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    @staticmethod
    def _parse(body: Any, seconds: float) -> Generation:
        if not isinstance(body, dict):
            raise InvalidResponse(f"body is a {type(body).__name__}, not an object")
        choices = body.get("choices")
        if not choices or not isinstance(choices, list):
            raise InvalidResponse(f"no choices{': ' + str(body['error'])[:200] if body.get('error') else ''}")
        choice = choices[0]
        usage = body.get("usage") or {}
        text = choice["message"].get("content") or ""
        if not isinstance(text, str):
            raise InvalidResponse(f"content is a {type(text).__name__}")
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


def _retry_after(response: httpx.Response, cap: float = 60.0) -> float | None:
    """The server's requested wait: `retry-after-ms` (OpenAI) or `Retry-After` in seconds, capped."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value:
            try:
                return min(cap, max(0.0, float(value) * scale))
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
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
