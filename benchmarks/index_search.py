"""Template index at scale: search throughput, memory and recall@10 vs exact, side by side per FAISS kind.

    .venv/bin/python benchmarks/index_search.py --templates 1000000 \\
        --kinds "Flat;IVF1024,Flat;IVF1024,PQ64x4fs,RFlat;IVF4096,PQ64"
    .venv/bin/python benchmarks/index_search.py --templates 18000000 --kinds "IVF4096,PQ64" --exact-queries 300

No bank of millions of real template embeddings ships offline, so the bank is simulated from real ones:
real ShareGPT first turns (the queries templates are made from) and, to reach 100k, Wikipedia lead
sentences are embedded with the packaged MiniLM;
each simulated template is a point between a real embedding and one of its 10 nearest real neighbours
(weight U(0.5, 1)) plus Gaussian noise of norm ~0.35, re-normalised. The bank therefore has the clusters,
the density differences and the near-duplicates of real template embeddings, at any size, generated
chunk by chunk so 18M vectors never sit in memory at once.

Queries are real: the global + 10 Gaussian coverage vectors of Wikipedia leads, exactly what the match
stage sends. Throughput counts documents (11 vectors each) per second on this machine's cores, embedding
excluded. Recall@10 is measured against exact inner-product search over the same bank; two figures:
`R@10` (the true nearest template is among the 10 returned: FAISS' usual recall figure) and `10-R@10`
(the share of the true top 10 returned). Memory is the saved index size and the resident growth when
the index is built.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.backends.models import cache_dir
from fineinstructions.io.sources import demo_documents, sharegpt_queries, wikipedia_documents
from fineinstructions.stages.index import empty_faiss_index, new_faiss_index, set_search_params

CHUNK = 250_000


def real_embeddings(embedder: Embedder, limit: int) -> np.ndarray:
    """MiniLM embeddings of real texts (cached: embedding them takes a few minutes): ShareGPT first turns,
    then Wikipedia lead sentences until `limit`."""
    path = cache_dir() / "bench" / f"real-{embedder.fingerprint}-{limit}.npy"
    if path.is_file():
        return np.load(path)
    texts = [t for t in (" ".join(q.text.split()) for q in sharegpt_queries()) if 10 <= len(t) <= 1000]
    for doc in wikipedia_documents():
        texts += [s for s in re.split(r"(?<=[.!?])\s+", doc.text) if len(s.split()) >= 6]
        if len(texts) >= limit:
            break
    vectors = embedder.encode(texts[:limit])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


class SimulatedBank:
    """Chunk i of a simulated template bank is a pure function of (base vectors, seed, i)."""

    def __init__(self, base: np.ndarray, size: int, seed: int = 0, noise: float = 0.35):
        self.base = base
        self.size = size
        self.seed = seed
        self.noise = noise
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        self.neighbours = index.search(base, 11)[1][:, 1:]

    def chunks(self) -> list[tuple[int, int]]:
        return [(a, min(a + CHUNK, self.size)) for a in range(0, self.size, CHUNK)]

    def chunk(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        n, d = stop - start, self.base.shape[1]
        anchor = rng.integers(0, len(self.base), n)
        neighbour = self.neighbours[anchor, rng.integers(0, self.neighbours.shape[1], n)]
        weight = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
        vectors = weight * self.base[anchor] + (1 - weight) * self.base[neighbour]
        vectors += rng.standard_normal((n, d), dtype=np.float32) * (self.noise / np.sqrt(d))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


def exact_top10(bank: SimulatedBank, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 ids over the whole bank, streamed chunk by chunk."""
    best_scores = np.full((len(queries), 10), -np.inf, np.float32)
    best_ids = np.full((len(queries), 10), -1, np.int64)
    for start, stop in bank.chunks():
        scores = queries @ bank.chunk(start, stop).T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :10]
        best_scores = np.take_along_axis(merged_scores, order, 1)
        best_ids = np.take_along_axis(merged_ids, order, 1)
    return best_ids


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(bank: SimulatedBank, kind: str, train_size: int) -> tuple[faiss.Index, float, float]:
    start = time.perf_counter()
    rss_before = rss_mb()
    training = None
    probe = empty_faiss_index(kind, bank.base.shape[1])
    if not probe.is_trained:
        training = bank.chunk(0, min(train_size, bank.size))  # the first chunk is as random as any
    index = new_faiss_index(kind, bank.base.shape[1], training)
    del training
    for a, b in bank.chunks():
        index.add(bank.chunk(a, b))
    return index, time.perf_counter() - start, rss_mb() - rss_before


def measure(index: faiss.Index, queries: np.ndarray, per_doc: int, k: int, repeats: int) -> tuple[float, np.ndarray]:
    index.search(queries[: per_doc * 4], k)  # warm up
    best = float("inf")
    ids = np.zeros(0)
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return len(queries) / per_doc / best, ids


def recalls(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    r_at_10 = float(np.mean([truth[i, 0] in found[i, :10] for i in range(len(truth))]))
    ten_at_10 = float(np.mean([len(set(found[i, :10]) & set(truth[i])) / 10 for i in range(len(truth))]))
    return r_at_10, ten_at_10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--templates", type=int, default=1_000_000)
    parser.add_argument("--kinds", default="Flat;IVF1024,Flat;IVF1024,PQ64x4fs,RFlat;IVF4096,PQ64")
    parser.add_argument("--nprobe", default="8,16,32", help="IVF nprobe values to try")
    parser.add_argument("--documents", type=int, default=200, help="Wikipedia leads whose vectors query")
    parser.add_argument("--exact-queries", type=int, default=400, help="query vectors with exact ground truth")
    parser.add_argument("--base", type=int, default=100_000, help="real embeddings the bank grows from")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    parser.add_argument("--k-factor", default="16", help="re-ranking depths of Refine kinds to try")
    parser.add_argument("--train-size", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)

    embedder = Embedder()
    base = real_embeddings(embedder, args.base)
    documents = demo_documents(args.documents, seed=1, min_chars=300, max_chars=5000)
    queries = np.concatenate(embedder.encode_with_coverage([d.text for d in documents]))
    per_doc = len(queries) // len(documents)
    bank = SimulatedBank(base, args.templates)
    sample = np.random.default_rng(0).choice(len(queries), min(args.exact_queries, len(queries)), replace=False)
    start = time.perf_counter()
    truth = exact_top10(bank, queries[sample])
    print(f"bank: {args.templates:,} simulated templates from {len(base):,} real embeddings; "
          f"{len(documents)} documents x {per_doc} vectors; exact top-10 of {len(sample)} vectors in "
          f"{time.perf_counter() - start:.0f} s; {args.threads} threads", flush=True)
    print(f"{'kind':<28}{'nprobe':>7}{'k_rf':>5}{'build s':>9}{'index MB':>10}{'RSS+ MB':>9}{'docs/s':>9}{'R@10':>7}"
          f"{'10-R@10':>9}", flush=True)
    reference_rate = None
    for kind in [k for k in args.kinds.split(";") if k]:
        index, seconds, rss_growth = build(bank, kind, args.train_size)
        with tempfile.TemporaryDirectory() as tmp:
            faiss.write_index(index, str(Path(tmp) / "i.faiss"))
            size_mb = (Path(tmp) / "i.faiss").stat().st_size / 2**20
        probes = [int(n) for n in args.nprobe.split(",")] if kind.startswith("IVF") else [0]
        factors = [int(f) for f in args.k_factor.split(",")] if "Refine" in kind or "RFlat" in kind else [0]
        for nprobe in probes:
            for factor in factors:
                set_search_params(index, nprobe=nprobe or None, ef_search=args.ef_search,
                                  refine_k_factor=factor or None)
                rate, _ = measure(index, queries, per_doc, 10, args.repeats)
                found = index.search(queries[sample], 10)[1]
                r10, ten10 = recalls(found, truth)
                if kind == "Flat":
                    reference_rate = rate
                ratio = f"  {rate / reference_rate:6.1f}x exact" if reference_rate else ""
                print(f"{kind:<28}{nprobe or '-':>7}{factor or '-':>5}{seconds:>9.0f}{size_mb:>10.0f}{rss_growth:>9.0f}"
                      f"{rate:>9,.0f}{r10:>7.3f}{ten10:>9.3f}{ratio}", flush=True)
        del index
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"peak RSS of the whole benchmark: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
