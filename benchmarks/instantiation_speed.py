"""Instantiation speed tricks, each measured side by side on the same prompts in one run.

    .venv/bin/python benchmarks/instantiation_speed.py --model qwen2.5-coder-1.5b-instruct --documents 8

Inputs: `--documents` real Wikipedia leads, each with the same 3 generic templates (every lead can fill
them), so each document has 3 requests that share the document prefix. Greedy decoding throughout.

1. Excerpt compression: the instantiate stage with the excerpt prompt (v2), the same under its grammar
   (excerpt ends of at most five words, `instantiate.constrained`), and a prompt that writes the answer
   out (written.v1, same instructions and examples otherwise). Figure: delivered answer
   characters (after expansion) per generated token, over the answers that passed the stage's gates.
2. Prefix reuse: prefill-only requests (max_tokens=1) in document-major order vs shuffled so that no two
   consecutive requests share a document. Figure: seconds of prefill per pair. Both orders start with
   the shared system prompt and examples already cached.
3. Prompt-lookup decoding: the same requests (excerpt prompt and written-out prompt) on an engine with
   llama-cpp-python's `LlamaPromptLookupDecoding` vs without. Figure: decode tokens/s, where decode time =
   request time minus the same request's prefill measured alone (max_tokens=1, same order, same engine);
   plus how many outputs are identical (greedy speculative decoding should not change them).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter

from fineinstructions.backends.base import Conversation, SamplingParams
from fineinstructions.backends.llamacpp import LlamaCppBackend
from fineinstructions.config import stage_config
from fineinstructions.io.sources import demo_documents
from fineinstructions.prompts import load_prompt
from fineinstructions.records import Match
from fineinstructions.stages.base import StageStats, document_major
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import stage_class

TEMPLATES = (
    "What is <fi>name of a topic, thing, place or person</fi>?",
    "Can you give me a short overview of <fi>subject</fi> and why it matters?",
    "What is <fi>name of a subject</fi> best known for, and where does it come from?",
)


def shuffled_apart(items: list[Match], seed: int) -> list[Match]:
    """A random order in which no two neighbours share a document (retrying seeds until one is found)."""
    rng = random.Random(seed)
    for _ in range(10_000):
        order = items[:]
        rng.shuffle(order)
        if all(a.document_id != b.document_id for a, b in zip(order, order[1:], strict=False)):
            return order
    raise RuntimeError("no order without adjacent documents; use more documents")


def timed(backend: LlamaCppBackend, conversations: list[Conversation], sampling: SamplingParams) -> list:
    return [backend.generate([c], sampling)[0] for c in conversations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-chars", type=int, default=500, help="document length bounds (Wikipedia leads)")
    parser.add_argument("--max-chars", type=int, default=1500)
    parser.add_argument("--lookup-prompts", default="v2,written.v1", help="prompts the lookup part runs")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--lookup-tokens", default="10,4", help="prompt-lookup draft lengths to compare")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: compression,prefix,lookup")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    documents = demo_documents(args.documents, seed=args.seed, min_chars=args.min_chars, max_chars=args.max_chars)
    matches = [Match(document_id=d.document_id, template_id=f"t{r}", score=1.0, rank=r, text=d.text, template=t)
               for d in documents for r, t in enumerate(TEMPLATES)]
    threads = args.threads or os.cpu_count() or 1
    backend = LlamaCppBackend(args.model, n_threads=threads)
    print(f"model {args.model}, {len(documents)} documents x {len(TEMPLATES)} templates = {len(matches)} "
          f"requests, {threads} threads, mean document {sum(len(d.text) for d in documents) / len(documents):.0f} "
          "chars")

    if "compression" not in skip:
        print("\n1. excerpt compression (instantiate stage, gates on)")
        rates: dict[str, float] = {}
        answer_rates: dict[str, float] = {}
        variants = [("v2", False), ("v2", True), ("written.v1", False)]
        for version, constrained in variants:
            config = stage_config({"instantiate": {"prompt_version": version, "max_tokens": args.max_tokens,
                                                   "constrained": constrained}})
            stage = stage_class("instantiate").from_config(config,
                                                          StageContext(config, engines={"instantiate": backend}))
            version = version + (" +grammar" if constrained else "")
            stats = StageStats()
            result = stage.run_batch(matches, stats)
            delivered = sum(len(p.answer) for p in result.records)
            generated = sum(p.completion_tokens for p in result.records)
            # The answer part alone: the tokens of what the model wrote between <answer> tags.
            answer_tokens = sum(backend.count_tokens([p.answer_with_markers for p in result.records]))
            rates[version] = delivered / generated if generated else 0.0
            answer_rates[version] = delivered / answer_tokens if answer_tokens else 0.0
            coverage = sum(p.excerpt_coverage for p in result.records) / max(1, len(result.records))
            print(f"  {version:12s}: {len(result.records):3d}/{len(matches)} pairs, {delivered:6d} answer chars / "
                  f"{generated:5d} generated tokens = {rates[version]:5.2f} chars/token ({answer_rates[version]:5.2f} "
                  f"per answer token), mean coverage {coverage:.2f}, {stats.seconds:6.1f} s, "
                  f"dropped {dict(stats.dropped)}")
        if rates["written.v1"]:
            for name in ("v2", "v2 +grammar"):
                print(f"  {name} / written-out chars per generated token: {rates[name] / rates['written.v1']:.2f}x "
                      f"(goal >= 3x); per answer token: {answer_rates[name] / answer_rates['written.v1']:.2f}x")

    prompt = load_prompt("instantiate", "v2")
    major = document_major(matches)
    shuffled = shuffled_apart(matches, args.seed)
    warm = prompt.conversation(document="A short warm-up document.", template="What is <fi>thing</fi>?")
    if "prefix" not in skip:
        print("\n2. prefix reuse (prefill only, max_tokens=1)")
        one = SamplingParams(max_tokens=1)
        per_order = {}
        for name, order in (("shuffled", shuffled), ("document-major", major)):
            timed(backend, [warm], one)  # the shared system prompt and examples are cached for both orders
            generations = timed(backend, [prompt.conversation(document=m.text, template=m.template) for m in order],
                                one)
            per_order[name] = sum(g.seconds for g in generations) / len(order)
            print(f"  {name:15s}: {per_order[name]:.3f} s prefill per pair")
        print(f"  document-major / shuffled: {per_order['document-major'] / per_order['shuffled']:.2f}x "
              "(goal <= 0.5x)")

    if "lookup" not in skip:
        print("\n3. prompt-lookup decoding, document-major order")
        sampling = SamplingParams(max_tokens=args.max_tokens)
        engines = [("plain", 0)] + [(f"lookup {k}", int(k)) for k in args.lookup_tokens.split(",")]
        loaded = {draft: backend if draft == 0 else LlamaCppBackend(args.model, n_threads=threads,
                                                                       prompt_lookup_tokens=draft)
                  for _, draft in engines}
        for version in args.lookup_prompts.split(","):
            lookup_prompt = load_prompt("instantiate", version)
            conversations = [lookup_prompt.conversation(document=m.text, template=m.template) for m in major]
            warm_up = lookup_prompt.conversation(document="A short warm-up document.", template="What is <fi>x</fi>?")
            texts: dict[str, list[str]] = {}
            rates: dict[str, float] = {}
            for name, draft in engines:
                engine = loaded[draft]
                timed(engine, [warm_up], SamplingParams(max_tokens=1))
                start = time.perf_counter()
                generations = timed(engine, conversations, sampling)
                wall = time.perf_counter() - start
                tokens = sum(g.completion_tokens for g in generations)
                # Decode time: the request minus its prefill, measured alone (max_tokens=1) in the same order.
                timed(engine, [warm_up], SamplingParams(max_tokens=1))
                prefills = timed(engine, conversations, SamplingParams(max_tokens=1))
                decode = sum(max(1e-6, g.seconds - p.seconds) for g, p in zip(generations, prefills, strict=True))
                texts[name], rates[name] = [g.text for g in generations], tokens / decode
                same = Counter(a == b for a, b in zip(texts["plain"], texts[name], strict=True))[True]
                print(f"  {version:10s} {name:10s}: {tokens:5d} tokens, {wall:6.1f} s wall = {tokens / wall:5.1f} "
                      f"tok/s; decode only {rates[name]:5.1f} tok/s = {rates[name] / rates['plain']:.2f}x plain "
                      f"(goal >= 1.3x); outputs identical to plain {same}/{len(conversations)}")
        for draft, engine in loaded.items():
            if draft:
                engine.close()
    backend.close()


if __name__ == "__main__":
    main()
