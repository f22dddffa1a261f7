"""Template bank quality and speed on a fixed sample of real ShareGPT prompts.

    .venv/bin/python benchmarks/template_bank.py --model qwen2.5-coder-1.5b-instruct --n 200

Prints, for one model:
  * the query filter's funnel over the whole packaged ShareGPT set (drop reasons);
  * the valid-template rate and the reason histogram on a seeded sample of `--n` filtered prompts
    (first attempt, and after the stage's retries);
  * templates per second and generated tokens/s of the stage vs the raw engine on the same prompts,
    measured side by side on the first `--speed-n` prompts (greedy, same order, one attempt);
  * template deduplication: the fraction removed, and spot checks of near-duplicate pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.llamacpp import LlamaCppBackend
from fineinstructions.config import stage_config
from fineinstructions.io.sources import sharegpt_queries
from fineinstructions.stages.base import StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import stage_class
from fineinstructions.stages.templatize import TemplatizeStage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--speed-n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-chars", type=int, default=500, help="query length bound of the sample")
    parser.add_argument("--out", type=Path, default=None, help="write the templates and rejects as JSON here")
    parser.add_argument("--retries", type=int, default=2, help="the stage's retries of invalid outputs")
    args = parser.parse_args()

    all_queries = list(sharegpt_queries())
    start = time.perf_counter()
    filter_config = stage_config({"query_filter": {"max_chars": args.max_chars}})
    filtered = stage_class("query_filter").from_config(filter_config, StageContext(filter_config)).process(all_queries)
    filter_seconds = time.perf_counter() - start
    funnel = Counter(r.reason.split(":")[0] for r in filtered.rejected)
    print(f"query filter over {len(all_queries)} ShareGPT first turns: {len(filtered.records)} kept "
          f"in {filter_seconds:.1f} s ({len(all_queries) / filter_seconds:.0f} queries/s)")
    for reason, count in funnel.most_common():
        print(f"  {reason:28s} {count:6d}  {100 * count / len(all_queries):5.1f} %")
    by_id = {q.query_id: q.text for q in all_queries}
    near = [r for r in filtered.rejected if r.reason.startswith("near_duplicate_query")]
    print(f"spot checks of {min(6, len(near))} of {len(near)} near-duplicate queries:")
    for r in random.Random(args.seed).sample(near, min(6, len(near))):
        print(f"  {r.row['text'][:110]!r}\n    ~ {by_id[r.reason.split(': ', 1)[1]][:110]!r}")

    sample = random.Random(args.seed).sample(filtered.records, args.n)
    backend = LlamaCppBackend(args.model)
    engines = {"templatize": backend}
    config = stage_config({"templatize": {"retries": args.retries}})
    stage = stage_class("templatize").from_config(config, StageContext(config, engines=engines))
    assert isinstance(stage, TemplatizeStage)
    one_attempt = stage_config({"templatize": {"retries": 0}})
    first_attempt = stage_class("templatize").from_config(one_attempt, StageContext(one_attempt, engines=engines))

    # Speed, side by side on the same prompts: raw engine calls vs the stage (one attempt each).
    speed = sample[: args.speed_n]
    conversations = [stage.prompt.conversation(query=q.text) for q in speed]
    sampling = SamplingParams(max_tokens=stage.max_tokens)
    backend.generate(conversations[:1], sampling)  # warm the shared few-shot prefix
    t0 = time.perf_counter()
    raw_tokens = sum(backend.llm.create_chat_completion(messages=c, temperature=0.0, max_tokens=stage.max_tokens,
                                                        seed=0)["usage"]["completion_tokens"] for c in conversations)
    raw_seconds = time.perf_counter() - t0
    speed_stats = StageStats()
    t0 = time.perf_counter()
    first_attempt.run_batch(speed, speed_stats)
    stage_seconds = time.perf_counter() - t0

    # Quality on the whole sample, with retries.
    stats = StageStats()
    t0 = time.perf_counter()
    result = stage.run_batch(sample, stats)
    quality_seconds = time.perf_counter() - t0
    reasons = Counter(r.reason.split(":")[0] for r in result.rejected)
    first_valid = len(result.records) - int(stats.metrics.get("recovered_by_retry", 0))

    print(f"\nmodel {args.model}, prompt {stage.prompt.version}, sample of {len(sample)} filtered prompts "
          f"(seed {args.seed}, <= {args.max_chars} chars)")
    print(f"valid templates, first attempt : {first_valid}/{len(sample)} = {100 * first_valid / len(sample):.1f} %")
    print(f"valid templates, with retries  : {len(result.records)}/{len(sample)} = "
          f"{100 * len(result.records) / len(sample):.1f} % (retried {int(stats.metrics.get('retried', 0))})")
    for reason, count in reasons.most_common():
        print(f"  {reason:28s} {count:4d}")
    print(f"throughput with retries: {len(result.records) / quality_seconds:.2f} templates/s, "
          f"{stats.completion_tokens / quality_seconds:.1f} generated tok/s")

    raw_rate, stage_rate = raw_tokens / raw_seconds, speed_stats.completion_tokens / stage_seconds
    print(f"\nspeed on {len(speed)} prompts, one attempt, side by side:")
    print(f"  raw engine : {raw_tokens:5d} tokens in {raw_seconds:6.1f} s = {raw_rate:5.1f} tok/s, "
          f"{len(speed) / raw_seconds:.2f} prompts/s")
    print(f"  stage      : {speed_stats.completion_tokens:5d} tokens in {stage_seconds:6.1f} s = "
          f"{stage_rate:5.1f} tok/s, "
          f"{speed_stats.rows_out / stage_seconds:.2f} valid templates/s")
    print(f"  stage / raw generated tok/s: {stage_rate / raw_rate:.3f}")

    dedup = stage_class("template_dedup").from_config(config, StageContext(config)).process(result.records)
    removed = len(dedup.rejected)
    print(f"\ntemplate dedup: {removed}/{len(result.records)} removed "
          f"({100 * removed / max(1, len(result.records)):.1f} %), "
          f"{Counter(r.reason for r in dedup.rejected)}")
    by_id = {t.template_id: t for t in result.records}
    for r in dedup.rejected[:8]:
        print(f"  {r.reason}: {r.row['template']!r}\n      ~ {by_id[r.row['duplicate_of']].template!r}")
    print("\nexamples:")
    for template in result.records[:12]:
        print(f"  {template.query[:90]!r}\n      -> {template.template!r}")
    if args.out:
        args.out.write_text(json.dumps({
            "templates": [t.model_dump() for t in result.records],
            "rejected": [r.row | {"reason": r.reason} for r in result.rejected]}, indent=1, default=str))
    backend.close()


if __name__ == "__main__":
    main()
