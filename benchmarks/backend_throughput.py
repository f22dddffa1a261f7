"""Bulk instantiation throughput: llama.cpp vs vLLM-CPU, and what the instantiate stage costs on top of each.

    .venv/bin/python benchmarks/backend_throughput.py --model qwen2.5-coder-0.5b-instruct --documents 8

Inputs: `--documents` real Wikipedia leads, each with the same generic templates (every lead can fill
them), rendered with the real instantiate prompt exactly as `InstantiateStage` sends them
(document-major, the document cut for the prompt as the stage cuts it). Greedy decoding throughout.

For each engine, side by side in one run, on the same requests:
- raw: one `Backend.generate` call with all the conversations;
- stage: `InstantiateStage.run_batch` over the same matches in one batch (prompt rendering, parsing,
  excerpt expansion, gates, token counting on top of the same engine call), and for vLLM also in batches of
  `--pipeline-batch-size` (`run.batch_size`: what the pipeline handed a model stage before it kept requests
  in flight) and fed as the pipeline feeds it now (`StageSpec.feed_size`: `run.requests_in_flight` rows a
  call on an engine that batches in flight; `--in-flight` lists the settings to measure, the default first).
Figure: generated tokens per second of wall time. Ratios: stage / raw per engine (goal >= 0.9) and
vLLM / llama.cpp (goal >= 2.5x). Before each timed pass the engine holds only the shared prompt prefix
(the system prompt and few-shot examples), so no pass reuses the previous pass's prompts: vLLM's prefix
cache is reset and warmed with one short request, llama.cpp's one-slot cache is warmed the same way.
The engines run one after the other (an idle vLLM engine would compete with llama.cpp for the cores).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from fineinstructions.backends.base import Backend, SamplingParams
from fineinstructions.config import stage_config
from fineinstructions.executors.commit import chunked
from fineinstructions.io.sources import demo_documents
from fineinstructions.records import Match
from fineinstructions.stages.base import StageStats, document_major
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.instantiate import InstantiateStage
from fineinstructions.stages.registry import StageSpec, stage_class

TEMPLATES = (
    "What is <fi>name of a topic, thing, place or person</fi>?",
    "Can you give me a short overview of <fi>subject</fi> and why it matters?",
    "What is <fi>name of a subject</fi> best known for, and where does it come from?",
)


@dataclass
class Pass:
    name: str
    tokens: int
    seconds: float
    pairs: int | None = None

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def measure(name: str, backend: Backend, matches: list[Match], args: argparse.Namespace,
            reset: Callable[[], None]) -> list[Pass]:
    """Raw engine call vs the instantiate stage on the same matches, with the same engine state before each."""
    config = stage_config({"instantiate": {"prompt_version": args.prompt_version, "max_tokens": args.max_tokens}})
    stage = stage_class("instantiate").from_config(config, StageContext(config, engines={"instantiate": backend}))
    assert isinstance(stage, InstantiateStage)
    ordered = document_major(matches)
    conversations = [stage.prompt.conversation(document=stage.prompt_document(m.text), template=m.template)
                     for m in ordered]
    warm = stage.prompt.conversation(document="A short warm-up document.", template="What is <fi>thing</fi>?")

    def prepare() -> None:
        reset()
        backend.generate([warm], SamplingParams(max_tokens=1))

    prepare()
    start = time.perf_counter()
    generations = backend.generate(conversations, stage.sampling)
    raw = Pass("raw generate", sum(g.completion_tokens for g in generations), time.perf_counter() - start)
    print(f"  {name:9s} {raw.name:22s}: {raw.tokens:6d} tokens in {raw.seconds:6.1f} s = {raw.rate:6.1f} tok/s "
          f"({sum(not g.ok for g in generations)} failed; {load()})", flush=True)
    passes = [raw]
    sizes = [len(matches)]
    if name == "vLLM":
        sizes += [args.pipeline_batch_size] if args.pipeline_batch_size else []
        sizes += [pipeline_feed(int(n)) for n in args.in_flight.split(",") if n]
    for i, size in enumerate(sizes):
        prepare()
        stats = StageStats()
        pairs = 0
        start = time.perf_counter()
        for batch in chunked(matches, size):
            pairs += len(stage.run_batch(batch, stats).records)
        label = ("stage, one batch" if i == 0 else f"stage, batches of {size}" if i == 1
                 else f"stage, fed {size} in flight")
        result = Pass(label, stats.completion_tokens, time.perf_counter() - start, pairs)
        print(f"  {name:9s} {label:22s}: {result.tokens:6d} tokens in {result.seconds:6.1f} s = {result.rate:6.1f} "
              f"tok/s, {pairs}/{len(matches)} pairs, stage/raw {result.rate / raw.rate:.3f} ({load()})", flush=True)
        passes.append(result)
    return passes


def pipeline_feed(requests_in_flight: int) -> int:
    """Rows per instantiate call the pipeline uses on a vLLM engine with this `run.requests_in_flight`."""
    config = stage_config({"instantiate": {"backend": {"kind": "vllm", "model": "any"}},
                           "run": {"requests_in_flight": requests_in_flight}})
    return StageSpec("instantiate", config, "", "").feed_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-chars", type=int, default=500, help="document length bounds (Wikipedia leads)")
    parser.add_argument("--max-chars", type=int, default=1500)
    parser.add_argument("--max-tokens", type=int, default=400, help="as instantiate.max_tokens")
    parser.add_argument("--prompt-version", default="v2")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads, vLLM cores")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--kv-cache-gb", type=float, default=2.0, help="vLLM KV cache on a CPU")
    parser.add_argument("--pipeline-batch-size", type=int, default=8, help="also run vLLM's stage in batches of "
                        "this size (the pipeline's run.batch_size); 0 skips it")
    parser.add_argument("--in-flight", default="128,32", help="run.requests_in_flight settings to feed vLLM's "
                        "stage with (128 is the default)")
    parser.add_argument("--skip", default="", help="comma list of engines to skip: llamacpp,vllm")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    documents = demo_documents(args.documents, seed=args.seed, min_chars=args.min_chars, max_chars=args.max_chars)
    matches = [Match(document_id=d.document_id, template_id=f"t{r}", score=1.0, rank=r, text=d.text, template=t)
               for d in documents for r, t in enumerate(TEMPLATES)]
    print(f"model {args.model}, {len(documents)} documents x {len(TEMPLATES)} templates = {len(matches)} requests, "
          f"max_tokens {args.max_tokens}, {args.threads} threads, mean document "
          f"{sum(len(d.text) for d in documents) / len(documents):.0f} chars, {os.cpu_count()} cores", flush=True)

    results: dict[str, list[Pass]] = {}
    if "llamacpp" not in skip:
        from fineinstructions.backends.llamacpp import LlamaCppBackend

        llama = LlamaCppBackend(args.model, n_ctx=args.n_ctx, n_threads=args.threads)
        results["llama.cpp"] = measure("llama.cpp", llama, matches, args, reset=lambda: None)
        llama.close()
    if "vllm" not in skip:
        from fineinstructions.backends.vllm_engine import VLLMBackend

        start = time.perf_counter()
        vllm = VLLMBackend(args.model, max_model_len=args.n_ctx, kv_cache_gb=args.kv_cache_gb,
                           n_threads=args.threads)
        print(f"  vLLM engine started in {time.perf_counter() - start:.1f} s (conversion cached)", flush=True)
        results["vLLM"] = measure("vLLM", vllm, matches, args, reset=vllm.llm.reset_prefix_cache)
        vllm.close()

    print("\nsummary (generated tokens/s of wall time)")
    for name, passes in results.items():
        raw = passes[0]
        for p in passes[1:]:
            print(f"  {name:9s} {p.name:22s} / raw: {p.rate / raw.rate:.3f} (goal >= 0.9)")
    if len(results) == 2:
        llama_raw, vllm_raw = results["llama.cpp"][0], results["vLLM"][0]
        llama_stage, vllm_stage = results["llama.cpp"][1], results["vLLM"][1]
        print(f"  vLLM / llama.cpp, raw  : {vllm_raw.rate:.1f} / {llama_raw.rate:.1f} = "
              f"{vllm_raw.rate / llama_raw.rate:.2f}x (goal >= 2.5x)")
        print(f"  vLLM / llama.cpp, stage: {vllm_stage.rate:.1f} / {llama_stage.rate:.1f} = "
              f"{vllm_stage.rate / llama_stage.rate:.2f}x")
        for batched in results["vLLM"][2:]:
            print(f"  vLLM {batched.name} / llama.cpp stage: {batched.rate / llama_stage.rate:.2f}x")


if __name__ == "__main__":
    main()
