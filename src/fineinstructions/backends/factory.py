"""Build backends from their config, and a pool that builds each configured backend once."""

from __future__ import annotations

import importlib
import os
from typing import Any

from fineinstructions.backends.auto import resolved_kind
from fineinstructions.backends.base import Backend
from fineinstructions.backends.cache import CachedBackend, RequestCache
from fineinstructions.config import BackendConfig
from fineinstructions.errors import ConfigError


def create_backend(config: BackendConfig) -> Backend:
    """Build the backend a config describes (the engine is loaded here, not at import time); `auto` becomes the
    fastest engine this machine has (backends/auto.py)."""
    kind = resolved_kind(config.kind)
    if kind == "custom":
        return load_custom_backend(config.model)
    if kind == "llamacpp":
        from fineinstructions.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config.model, n_ctx=config.n_ctx, n_threads=config.n_threads,
                               prompt_lookup_tokens=config.prompt_lookup_tokens)
    if kind == "openai":
        from fineinstructions.backends.openai_http import OpenAICompatibleBackend

        return OpenAICompatibleBackend(config.base_url or "", config.model,
                                       api_key=os.environ.get(config.api_key_env, ""),
                                       max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                                       max_retries=config.max_retries, send_json_schema=config.json_schema,
                                       **_http_limits(config))
    if kind == "llamacpp_server":
        from fineinstructions.backends.llama_server import LlamaServerBackend

        # llama_cpp.server runs one request at a time: more than two in flight only queue against the timeout.
        return LlamaServerBackend(config.model, n_ctx=config.n_ctx, n_threads=config.n_threads,
                                  max_concurrency=min(config.max_concurrency, 2), timeout_s=config.timeout_s,
                                  max_retries=config.max_retries, max_restarts=config.max_restarts,
                                  **_http_limits(config))
    if kind == "transformers":
        from fineinstructions.backends.transformers_engine import TransformersBackend

        return TransformersBackend(config.model, dtype=config.dtype, batch_size=config.max_concurrency,
                                   max_length=config.n_ctx, n_threads=config.n_threads)
    if kind == "vllm":
        from fineinstructions.backends.vllm_engine import VLLMBackend

        return VLLMBackend(config.model, max_model_len=config.n_ctx, dtype=config.dtype,
                           gpu_memory_utilization=config.gpu_memory_utilization,
                           tensor_parallel_size=config.tensor_parallel_size, kv_cache_gb=config.kv_cache_gb,
                           enforce_eager=config.enforce_eager, n_threads=config.n_threads, revision=config.revision)
    raise ValueError(f"unknown backend kind {config.kind!r}")


def _http_limits(config: BackendConfig) -> dict[str, Any]:
    """The per-request limits of an HTTP backend: total deadline, body size, Retry-After cap."""
    return {"request_deadline_s": config.request_deadline_s, "max_response_bytes": config.max_response_bytes,
            "max_retry_after_s": config.max_retry_after_s}


def load_custom_backend(spec: str) -> Backend:
    """Call the factory that "package.module:factory" names and check it returns a Backend."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"a custom backend is named 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot load custom backend {spec!r}: {err}") from err
    backend = factory()
    if not isinstance(backend, Backend):
        raise ConfigError(f"{spec} returned {type(backend).__name__}, which lacks the Backend methods")
    return backend


class BackendPool:
    """One live backend per distinct config, so the generator and an identical judge share one model.

    With a RequestCache, `get(config, namespace)` hands out the engine behind a CachedBackend, so every
    finished call is stored under the namespace (the stage and its prompt version) and never paid twice.
    """

    def __init__(self, cache: RequestCache | None = None) -> None:
        self.cache = cache
        self._backends: dict[str, Backend] = {}
        self._cached: dict[tuple[str, str], Backend] = {}
        self._owns_engines = True

    def sharing(self, cache: RequestCache | None) -> BackendPool:
        """A pool serving this pool's live engines (and those it builds later for itself) behind another
        request cache; closing it closes that cache, not the engines."""
        pool = BackendPool(cache)
        pool._backends = self._backends
        pool._owns_engines = False
        return pool

    def register(self, config: BackendConfig, backend: Backend) -> None:
        """Serve `config` with an already-built backend (e.g. one shared with other code)."""
        self._backends[config.model_dump_json()] = backend

    def get(self, config: BackendConfig, namespace: str | None = None) -> Backend:
        """The engine for `config`; behind the request cache when the pool has one and a namespace is given."""
        key = config.model_dump_json()
        if key not in self._backends:
            self._backends[key] = create_backend(config)
        if self.cache is None or namespace is None:
            return self._backends[key]
        if (key, namespace) not in self._cached:
            self._cached[(key, namespace)] = CachedBackend(self._backends[key], self.cache, namespace)
        return self._cached[(key, namespace)]

    def close(self) -> None:
        if self._owns_engines:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()
        self._cached.clear()
        if self.cache is not None:
            self.cache.close()
