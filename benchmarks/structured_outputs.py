"""Templatize with and without structured decoding (the prompt's JSON schema) on one engine, side by side.

    .venv/bin/python benchmarks/structured_outputs.py --engine llamacpp --queries 48
    .venv/bin/python benchmarks/structured_outputs.py --engine vllm --model qwen2.5-coder-0.5b-instruct

Inputs: `--queries` real ShareGPT first user turns, read as `fineinstructions bank` reads them (the packaged
ShareGPT source, not only information-seeking questions, sampled with `--seed`) and passed through the query
filter at its defaults. Both passes run `TemplatizeStage` on the same queries and engine (greedy first
attempt, then the stage's retries), one with `templatize.structured: false` and one with `true`; the engine
holds only the shared prompt prefix before each (vLLM's prefix cache is reset, then both engines are warmed
with one short request). Printed per pass: valid templates, drop reasons, completion tokens, generated
tokens/s of wall time and seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fineinstructions.backends.base import Backend, SamplingParams
from fineinstructions.backends.factory import create_backend
from fineinstructions.config import BackendConfig, SourceConfig, stage_config
from fineinstructions.io.read_stats import ReadStats
from fineinstructions.pipeline import load_queries
from fineinstructions.records import Query
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.query_filter import QueryFilterStage
from fineinstructions.stages.templatize import TemplatizeStage


@dataclass
class Pass:
    """One templatize pass over the queries."""

    name: str
    queries: int
    valid: int
    dropped: Counter[str] = field(default_factory=Counter)
    completion_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def sharegpt_queries(n: int, seed: int = 0) -> list[Query]:
    """`n` ShareGPT queries as the bank reads them (sampled with `seed`), kept by the default query filter."""
    pool = load_queries(SourceConfig(kind="sharegpt", information_seeking=False, limit=max(4 * n, n + 50),
                                     seed=seed), ReadStats())
    config = stage_config({})
    kept = QueryFilterStage.from_config(config, StageContext(config)).run_batch(pool, StageStats()).records
    return list(kept[:n])


def templatize(backend: Backend, queries: Sequence[Query], structured: bool, max_tokens: int, retries: int,
               prepare: Callable[[], None]) -> Pass:
    """One TemplatizeStage pass over `queries` (after `prepare` resets the engine's caches)."""
    config = stage_config({"templatize": {"structured": structured, "max_tokens": max_tokens, "retries": retries}})
    stage = TemplatizeStage.from_config(config, StageContext(config, engines={"templatize": backend}))
    prepare()
    stats = StageStats()
    start = time.perf_counter()
    result = stage.run_batch(queries, stats)
    seconds = time.perf_counter() - start
    return Pass("structured" if structured else "unconstrained", len(queries), len(result.records), stats.dropped,
                stats.completion_tokens, stats.requests, seconds)


def table(passes: Sequence[Pass]) -> str:
    """The passes side by side, one column each."""
    reasons = sorted({r for p in passes for r in p.dropped})
    rows = [("", *(p.name for p in passes)),
            ("valid templates", *(f"{p.valid}/{p.queries}" for p in passes)),
            *((f"  dropped: {r}", *(str(p.dropped.get(r, 0)) for p in passes)) for r in reasons),
            ("requests", *(str(p.requests) for p in passes)),
            ("completion tokens", *(str(p.completion_tokens) for p in passes)),
            ("completion tokens/s", *(f"{p.rate:.1f}" for p in passes)),
            ("seconds", *(f"{p.seconds:.1f}" for p in passes))]
    width = max(len(r[0]) for r in rows) + 2
    cols = [max(len(r[i]) for r in rows) + 2 for i in range(1, len(rows[0]))]
    return "\n".join(r[0].ljust(width) + "".join(c.rjust(w) for c, w in zip(r[1:], cols, strict=True)) for r in rows)


def engine(name: str, model: str, n_ctx: int, threads: int | None, kv_cache_gb: float | None) -> Backend:
    """The engine the factory builds for `--engine` (vLLM: the KV cache sized for a CPU when given)."""
    if name == "vllm":
        return create_backend(BackendConfig(kind="vllm", model=model, n_ctx=n_ctx, n_threads=threads,
                                            kv_cache_gb=kv_cache_gb))
    return create_backend(BackendConfig(kind="llamacpp", model=model, n_ctx=n_ctx, n_threads=threads))


def main(argv: Sequence[str] | None = None) -> list[Pass]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--engine", choices=("llamacpp", "vllm"), default="llamacpp")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=200, help="as templatize.max_tokens")
    parser.add_argument("--retries", type=int, default=2, help="as templatize.retries")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads, vLLM cores (default: all)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--kv-cache-gb", type=float, default=None, help="vLLM KV cache (default on a CPU: 2)")
    args = parser.parse_args(argv)

    queries = sharegpt_queries(args.queries, args.seed)
    print(f"{args.engine} {args.model}: {len(queries)} ShareGPT queries, max_tokens {args.max_tokens}, "
          f"retries {args.retries}, {os.cpu_count()} cores", flush=True)
    backend = engine(args.engine, args.model, args.n_ctx, args.threads, args.kv_cache_gb)
    reset = getattr(getattr(backend, "llm", None), "reset_prefix_cache", None) if args.engine == "vllm" else None
    warm_stage = TemplatizeStage(backend)
    warm = warm_stage.conversation(Query(query_id="warm", text="What is a warm-up?"))

    def prepare() -> None:
        if callable(reset):
            reset()
        backend.generate([warm], SamplingParams(max_tokens=1))

    try:
        passes = [templatize(backend, queries, structured, args.max_tokens, args.retries, prepare)
                  for structured in (False, True)]
    finally:
        backend.close()
    print(table(passes), flush=True)
    return passes


if __name__ == "__main__":
    main()
