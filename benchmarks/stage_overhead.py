"""Stage overhead: the templatize stage vs the raw llama.cpp engine on the same prompts, side by side.

    .venv/bin/python benchmarks/stage_overhead.py --model qwen2.5-coder-0.5b-instruct --queries 16

Both sides load the same GGUF once, run the same few-shot conversations in the same order with greedy
decoding, and the figure is generated tokens per second of wall time. The ratio stage/raw shows what
prompt rendering, parsing, validation and bookkeeping cost on top of the engine (1.0 = nothing).
"""

from __future__ import annotations

import argparse
import os
import time

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.llamacpp import LlamaCppBackend
from fineinstructions.config import stage_config
from fineinstructions.io.sources import demo_queries
from fineinstructions.prompts import load_prompt
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import stage_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="alternate raw/stage this many times")
    args = parser.parse_args()

    queries = demo_queries(args.queries, seed=0)
    prompt = load_prompt("templatize")
    conversations = [prompt.conversation(query=q.text.strip()) for q in queries]
    backend = LlamaCppBackend(args.model, n_threads=os.cpu_count())
    sampling = SamplingParams(max_tokens=args.max_tokens)
    # Warm up: the first call pays for the shared few-shot prefix on both sides alike.
    backend.generate(conversations[:1], sampling)

    config = stage_config({"templatize": {"max_tokens": args.max_tokens}})
    context = StageContext(config, engines={"templatize": backend})
    raw_tokens = raw_seconds = stage_tokens = stage_seconds = 0.0
    valid = 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        for conversation in conversations:
            response = backend.llm.create_chat_completion(messages=conversation, temperature=0.0,
                                                          max_tokens=args.max_tokens, seed=0)
            raw_tokens += response["usage"]["completion_tokens"]
        raw_seconds += time.perf_counter() - start

        stage = stage_class("templatize").from_config(config, context)
        stats = StageStats()
        start = time.perf_counter()
        result = stage.run_batch(queries, stats)
        stage_seconds += time.perf_counter() - start
        stage_tokens += stats.completion_tokens
        valid = len(result.records)

    raw_rate, stage_rate = raw_tokens / raw_seconds, stage_tokens / stage_seconds
    print(f"model {args.model}, {len(queries)} queries x {args.rounds} rounds, {os.cpu_count()} threads")
    print(f"raw engine : {raw_tokens:6.0f} tokens in {raw_seconds:6.1f} s = {raw_rate:6.1f} tok/s")
    print(f"stage      : {stage_tokens:6.0f} tokens in {stage_seconds:6.1f} s = {stage_rate:6.1f} tok/s "
          f"({valid}/{len(queries)} valid templates)")
    print(f"stage / raw tokens/s: {stage_rate / raw_rate:.3f}")
    backend.close()


if __name__ == "__main__":
    main()
