"""Throughput of one GPU: embed documents, instantiate and judge through vLLM, project the cost of a billion tokens.

    python benchmarks/gpu_throughput.py --out gpu.json    # on a GPU node, with the vllm and demo extras (< 8 min)
    .venv/bin/python benchmarks/gpu_throughput.py --size tiny --out cpu.json     # the same steps on a CPU

Inputs: packaged Wikipedia leads, each with the same generic templates (every lead can fill them), so the
figures measure the engine and the stages, not the retrieval's luck. Steps, timed one by one:
1. embed the documents with Gaussian coverage pooling (the match stage's encoder) on the GPU;
2. start vLLM with the embedded model (converted once from GGUF to safetensors, cached);
3. instantiate every (document, template) through `InstantiateStage` in batches of `--batch-size`;
4. judge the instantiated pairs through `JudgeStage` on the same engine (when fewer than `min_judge` pairs
   passed, as with the 135M model, extractive reference pairs top the judge's input up, counted apart);
5. filter the instantiated pairs as the pipeline does (judge score, excerpt coverage, token budget).

JSON written to `--out` (and printed): output tokens/s per GPU, prefill tokens/s, kept pairs per GPU-hour,
documents embedded per second and the projected GPU-hours per billion generated tokens, with the
counts and seconds they come from. On a CPU, `--size tiny` runs 4 documents with the 135M test model,
so a test proves the script works; its figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from fineinstructions.backends.base import BackendStats
from fineinstructions.backends.embeddings import Embedder
from fineinstructions.backends.models import DEFAULT_EMBEDDER, DEFAULT_GENERATOR, TEST_GENERATOR
from fineinstructions.config import stage_config
from fineinstructions.executors.commit import chunked
from fineinstructions.io.atomic import write_json_atomic
from fineinstructions.io.sources import demo_documents
from fineinstructions.records import Document, Match, Pair
from fineinstructions.stages.base import Stage, StageStats
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import stage_class

TEMPLATES = (
    "What is <fi>name of a topic, thing, place or person</fi>?",
    "Can you give me a short overview of <fi>subject</fi> and why it matters?",
    "What is <fi>name of a subject</fi> best known for, and where does it come from?",
)
SIZES: dict[str, dict[str, Any]] = {
    # 4 documents, the 135M model, short outputs: proves the script on a CPU in about a minute.
    "tiny": {"documents": 4, "embed_documents": 16, "model": TEST_GENERATOR, "max_tokens": 96, "kv_cache_gb": 0.5,
             "min_judge": 8},
    # One GPU within 8 minutes, engine start and conversion included.
    "gpu": {"documents": 1024, "embed_documents": 8192, "model": DEFAULT_GENERATOR, "max_tokens": 400,
            "kv_cache_gb": None, "min_judge": 256},
}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA, {torch.cuda.device_count()} visible)"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def embed(documents: list[str], embedder: Embedder, chunks: int) -> dict[str, float]:
    embedder.encode_with_coverage(documents[: min(8, len(documents))], chunks=chunks)  # warm-up (kernels, caches)
    start = time.perf_counter()
    vectors = embedder.encode_with_coverage(documents, chunks=chunks)
    seconds = time.perf_counter() - start
    return {"documents": len(documents), "seconds": round(seconds, 3), "vectors_per_document": 1 + chunks,
            "documents_per_s": round(len(documents) / seconds, 2), "device": embedder.device,
            "dimension": int(vectors[0].shape[1]) if vectors else 0}


def reference_pairs(documents: list[Document], n: int) -> list[Pair]:
    """Extractive pairs (the lead's first sentences answer "What is <title>?") to load the judge with."""
    pairs = []
    for d in documents[:n]:
        answer = " ".join(re.split(r"(?<=[.!?])\s+", d.text)[:2])
        pairs.append(Pair(document_id=d.document_id, template_id="reference", text=d.text,
                          template="What is <fi>topic</fi>?", instantiated_instruction=f"What is {d.title}?",
                          answer=answer, answer_with_markers=answer, excerpt_coverage=1.0))
    return pairs


def run_stage(stage: Stage[Any, Pair], records: list[Any], batch_size: int,
              engine: BackendStats) -> tuple[list[Any], dict[str, float]]:
    """Run a stage over records in batches; the engine's own counters give the token figures."""
    before = (engine.prompt_tokens, engine.completion_tokens, engine.requests)
    stats = StageStats()
    out: list[Any] = []
    start = time.perf_counter()
    for batch in chunked(records, batch_size):
        out.extend(stage.run_batch(batch, stats).records)
    seconds = time.perf_counter() - start
    prompt = engine.prompt_tokens - before[0]
    completion = engine.completion_tokens - before[1]
    return out, {"requests": engine.requests - before[2], "rows_out": len(out), "seconds": round(seconds, 3),
                 "prompt_tokens": prompt, "completion_tokens": completion,
                 "output_tokens_per_s": round(completion / seconds, 1) if seconds else 0.0,
                 "prefill_tokens_per_s": round(prompt / seconds, 1) if seconds else 0.0,
                 "dropped": dict(stats.dropped)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu")
    parser.add_argument("--documents", type=int, help="documents to instantiate (x3 templates)")
    parser.add_argument("--embed-documents", type=int, help="documents to embed")
    parser.add_argument("--model", help="generator: a registry name, GGUF, HF folder or Hub name")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--batch-size", type=int, default=512, help="requests handed to vLLM at once")
    parser.add_argument("--coverage-chunks", type=int, default=5, help="local vectors per document (paper: 5)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"))
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    n_docs = args.documents or size["documents"]
    n_embed = args.embed_documents or size["embed_documents"]
    model = args.model or size["model"]
    max_tokens = args.max_tokens or size["max_tokens"]
    started = time.perf_counter()

    leads = demo_documents(max(n_docs, n_embed), seed=0, min_chars=300, max_chars=2000)
    print(f"{device_name()}; {len(leads)} Wikipedia leads; model {model}", flush=True)
    embedder = Embedder(args.embedder, device="auto", batch_size=128)
    embedding = embed([d.text for d in leads[:n_embed]], embedder, args.coverage_chunks)
    print(f"embed: {embedding['documents_per_s']} documents/s on {embedding['device']}", flush=True)
    del embedder

    from fineinstructions.backends.vllm_engine import VLLMBackend

    start = time.perf_counter()
    engine = VLLMBackend(model, max_model_len=args.n_ctx, gpu_memory_utilization=args.gpu_memory_utilization,
                         kv_cache_gb=size["kv_cache_gb"])
    engine_start_s = time.perf_counter() - start
    print(f"vLLM started in {engine_start_s:.1f} s (conversion included on a first run)", flush=True)

    documents = leads[:n_docs]
    matches = [Match(document_id=d.document_id, template_id=f"t{r}", score=1.0, rank=r, text=d.text, template=t,
                     title=d.title) for d in documents for r, t in enumerate(TEMPLATES)]
    # The stages' settings: instantiate's max_tokens, the judge's and the filter's defaults (min_score 4), the
    # filter's pair dedup exact only (before stages were built from config the benchmark ran it without one).
    config = stage_config({"instantiate": {"max_tokens": max_tokens}, "judge": {"min_score": 4},
                           "filter": {"near_duplicate_threshold": None}})
    context = StageContext(config, engines={"instantiate": engine, "judge": engine})
    instantiate = stage_class("instantiate").from_config(config, context)
    pairs, inst = run_stage(instantiate, matches, args.batch_size, engine.stats)
    print(f"instantiate: {inst['rows_out']}/{len(matches)} pairs, {inst['output_tokens_per_s']} output tok/s, "
          f"{inst['prefill_tokens_per_s']} prefill tok/s", flush=True)
    judge = stage_class("judge").from_config(config, context)
    references = reference_pairs(leads, max(0, size["min_judge"] - len(pairs)))
    judged, jud = run_stage(judge, pairs + references, args.batch_size, engine.stats)
    jud["reference_pairs"] = len(references)
    print(f"judge: {jud['rows_out']} pairs ({len(references)} extractive references), "
          f"{jud['output_tokens_per_s']} output tok/s, {jud['prefill_tokens_per_s']} prefill tok/s", flush=True)
    instantiated = [p for p in judged if p.template_id != "reference"]
    kept: list[Pair] = stage_class("filter").from_config(config, context).run_batch(instantiated, StageStats()).records
    engine.close()

    generation_s = inst["seconds"] + jud["seconds"]
    completion = inst["completion_tokens"] + jud["completion_tokens"]
    prompt = inst["prompt_tokens"] + jud["prompt_tokens"]
    output_rate = completion / generation_s if generation_s else 0.0
    result = {
        "device": device_name(),
        "size": args.size,
        "model": model,
        "embedder": args.embedder,
        "documents": len(documents),
        "requests": inst["requests"] + jud["requests"],
        "engine_start_s": round(engine_start_s, 1),
        "embed": embedding,
        "instantiate": inst,
        "judge": jud,
        "kept_pairs": len(kept),
        "output_tokens_per_s_per_gpu": round(output_rate, 1),
        "prefill_tokens_per_s_per_gpu": round(prompt / generation_s, 1) if generation_s else 0.0,
        "kept_pairs_per_gpu_hour": round(len(kept) / generation_s * 3600, 1) if generation_s else 0.0,
        "documents_embedded_per_s": embedding["documents_per_s"],
        "gpu_hours_per_billion_generated_tokens": round(1e9 / output_rate / 3600, 1) if output_rate else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
