"""Cost of Gaussian coverage pooling vs one plain mean-pooled pass, on the same documents, side by side.

    .venv/bin/python benchmarks/coverage_pooling.py --documents 200 --rounds 3

Short documents are Wikipedia leads that fit the model's 256-token window: there the plain pass
(`SentenceTransformer.encode`, mean pooling) and coverage pooling (1 global + K=10 local vectors from the
same forward pass) embed exactly the same tokens, so the ratio is the price of the extra vectors.
Long documents join four leads (~800 tokens): the plain pass truncates them to the window, coverage
pooling embeds every window; the fair comparison there is coverage K=10 vs K=0 over the same windows.
Rounds alternate the methods so drift in machine speed hits both alike.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.io.sources import demo_documents


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    embedder = Embedder()
    short = [d.text for d in demo_documents(args.documents, seed=2, min_chars=300, max_chars=1200)]
    long = [" ".join(short[i : i + 4]) for i in range(0, len(short) - 3, 4)]
    embedder.encode(short[:8])  # warm up
    tokens = embedder.model.tokenizer(long, add_special_tokens=False, verbose=False)["input_ids"]
    mean_long = sum(map(len, tokens)) / len(tokens)

    times = {key: 0.0 for key in ("plain", "coverage", "plain_long", "global_long", "coverage_long")}
    for _ in range(args.rounds):
        times["plain"] += timed(lambda: embedder.encode(short))
        times["coverage"] += timed(lambda: embedder.encode_with_coverage(short, args.chunks))
        times["plain_long"] += timed(lambda: embedder.encode(long))
        times["global_long"] += timed(lambda: embedder.encode_with_coverage(long, 0))
        times["coverage_long"] += timed(lambda: embedder.encode_with_coverage(long, args.chunks))
    rate = {key: args.rounds * (len(short) if "long" not in key else len(long)) / value
            for key, value in times.items()}
    print(f"{len(short)} leads within the window, {len(long)} joined documents of ~{mean_long:.0f} tokens; "
          f"{args.rounds} rounds; {os.cpu_count()} threads")
    print(f"short, plain mean-pooled pass:       {rate['plain']:7.1f} docs/s")
    print(f"short, coverage pooling (K={args.chunks}):     {rate['coverage']:7.1f} docs/s   "
          f"cost ratio {times['coverage'] / times['plain']:.3f}x (goal <= 1.1)")
    print(f"long, plain pass (truncated):        {rate['plain_long']:7.1f} docs/s")
    print(f"long, windows, global only (K=0):    {rate['global_long']:7.1f} docs/s")
    print(f"long, windows + coverage (K={args.chunks}):    {rate['coverage_long']:7.1f} docs/s   "
          f"cost ratio vs K=0 {times['coverage_long'] / times['global_long']:.3f}x, "
          f"vs truncated {times['coverage_long'] / times['plain_long']:.2f}x")


if __name__ == "__main__":
    main()
