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

`--bank` measures the streaming bank build instead (`stages.bank.build_bank_index`): N synthetic templates
arrive as Arrow batches (1% of them repeat an id and are dropped), are written to the index folder, embedded
into float16 shards on disk and indexed with the large-bank kind `IVF..,PQ..x4fs,RDisk` (candidates
re-scored exactly from the memory-mapped shards); the old `Refine(PQ..)` kind is then built from the same
shards. The build runs in a child process, whose peak RSS (ru_maxrss) is the build's. The vectors are
`--vectors simulated` (the simulated bank above: each description names its row, and a stand-in embedder
returns that row's simulated vector; real Wikipedia coverage vectors query) or `--vectors hashing`
(synthetic topical descriptions through the `hashing-sim` embedder, which also embeds synthetic documents
as queries). Exact top 10 = brute force over the float16 shards. Search latency is per query vector, first
with the shards evicted from the page cache (cold), then warm.

    nice -n 10 .venv/bin/python benchmarks/index_search.py --bank --templates 1000000 --work-dir /tmp/bank
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from fineinstructions.backends.embeddings import Embedder, HashingEmbedder
from fineinstructions.backends.models import cache_dir
from fineinstructions.hashing import short_hash
from fineinstructions.io.sources import demo_documents, sharegpt_queries, wikipedia_documents
from fineinstructions.records import Template
from fineinstructions.stages.bank import build_bank_index, faiss_index_from_shards
from fineinstructions.stages.index import (
    VECTORS_DIR,
    TemplateIndex,
    VectorShards,
    empty_faiss_index,
    merge_search_results,
    new_faiss_index,
    resolve_spec,
    set_search_params,
    shard_name,
)

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


# -- the streaming bank build (--bank) -------------------------------------------------------------------

BANK_BATCH = 65_536  # templates per Arrow batch of the stream
SIM_BLOCK = 8_192  # rows of the simulated bank generated at a time


class SimulatedEmbedder(HashingEmbedder):
    """Stands in for the embedding model of a simulated bank: a description `simulated template {row}`
    embeds to that row of the simulated bank (generated SIM_BLOCK rows at a time, as a pure function)."""

    def __init__(self, base_path: Path, size: int):
        super().__init__(384, model="simulated-bank")
        base = np.load(base_path)
        self.dimension = base.shape[1]
        self.bank = SimulatedBank(base, size)
        self.key = short_hash(f"{base_path.name}|{size}")
        self._block: tuple[int, np.ndarray] = (-1, np.zeros((0, self.dimension), np.float32))

    @property
    def fingerprint(self) -> str:
        return self.key

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.fromiter((int(t.rsplit(" ", 1)[1]) for t in texts), dtype=np.int64, count=len(texts))
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        blocks = rows // SIM_BLOCK
        for block in np.unique(blocks):
            if self._block[0] != block:
                start = int(block) * SIM_BLOCK
                self._block = (int(block), self.bank.chunk(start, start + SIM_BLOCK))
            where = blocks == block
            out[where] = self._block[1][rows[where] - block * SIM_BLOCK]
        return out


def synthetic_descriptions(rows: np.ndarray, topics: int = 5_000) -> list[str]:
    """Topical synthetic descriptions (a pure function of the row): 8 words of the row's topic, 4 common."""
    rng = np.random.default_rng([7, int(rows[0])])
    topic = rng.integers(0, topics, len(rows))
    own = rng.integers(0, 40, (len(rows), 8))
    common = rng.integers(0, 20_000, (len(rows), 4))
    return [f"a document about t{t}w{a} t{t}w{b} t{t}w{c} t{t}w{d} with t{t}w{e} t{t}w{f} t{t}w{g} t{t}w{h} "
            f"and c{i} c{j} c{k} c{m}" for t, (a, b, c, d, e, f, g, h), (i, j, k, m)
            in zip(topic.tolist(), own.tolist(), common.tolist(), strict=True)]


def template_stream(size: int, vectors: str) -> Iterator[pa.RecordBatch]:
    """`size` distinct synthetic templates in Arrow batches; every 100th row repeats the id before it."""
    schema = Template.arrow_schema()
    for start in range(0, size, BANK_BATCH):
        rows = np.arange(start, min(start + BANK_BATCH, size))
        ids = [f"sim-{r}" for r in rows.tolist()]
        descriptions = ([f"simulated template {r}" for r in rows.tolist()] if vectors == "simulated"
                        else synthetic_descriptions(rows))
        repeat = rows[rows % 100 == 99] - start
        ids += [ids[i - 1] for i in repeat.tolist()]
        descriptions += ["a repeated id" for _ in repeat.tolist()]
        n = len(ids)
        yield pa.RecordBatch.from_arrays([
            pa.array(ids), pa.array([f"Write about <fi>topic {r % 997}</fi>." for r in range(n)]),
            pa.array(descriptions), pa.array([["topic"]] * n, pa.list_(pa.string())), pa.array([""] * n),
            pa.array([""] * n), pa.array(["synthetic"] * n), pa.array([""] * n), pa.array([""] * n),
            pa.array([0] * n, pa.int64()), pa.array([1] * n, pa.int64())], schema=schema)


def _child_build(args: dict, result: multiprocessing.Queue) -> None:
    """The build, in its own process so that its peak RSS is its own."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    faiss.omp_set_num_threads(args["threads"])
    if args["vectors"] == "simulated":
        embedder: Embedder = SimulatedEmbedder(Path(args["base_path"]), args["templates"])
    else:
        embedder = HashingEmbedder(384)
    start = time.perf_counter()
    meta = build_bank_index(template_stream(args["templates"], args["vectors"]), embedder, Path(args["directory"]),
                            spec=args["spec"], train_size=args["train_size"], workers=args["workers"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
    result.put((meta, seconds, peak, children))


def exact_top10_shards(vectors: VectorShards, queries: np.ndarray, rows: int = 32_768) -> np.ndarray:
    """Exact top-10 ids over the float16 shards (each mapped only while it is read), `rows` at a time."""
    assert vectors.folder is not None
    best = (np.full((len(queries), 10), -np.inf, np.float32), np.full((len(queries), 10), -1, np.int64))
    for number in range(len(vectors.shards)):
        shard = np.load(vectors.folder / shard_name(number), mmap_mode="r")
        for a in range(0, len(shard), rows):
            chunk = np.asarray(shard[a : a + rows], dtype=np.float32)
            scores, top = faiss.knn(queries, chunk, min(10, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            offset = number * vectors.rows_per_shard + a
            best = merge_search_results([best, (scores, top + offset)], 10)
        del shard
    return best[1]


def evict(paths: Sequence[Path]) -> None:
    """Drop these files' pages from the page cache (only pages no process maps), so a search starts cold."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_search(search, queries: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    """(first-pass seconds, best seconds of `repeats` passes, ids of the last) for searching all queries."""
    start = time.perf_counter()
    _, ids = search(queries, 10)
    first = time.perf_counter() - start
    best = first
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = search(queries, 10)
        best = min(best, time.perf_counter() - start)
    return first, best, ids


def bank_main(args: argparse.Namespace) -> None:
    faiss.omp_set_num_threads(args.threads)
    if args.vectors == "simulated":
        embedder: Embedder = Embedder()
        base = real_embeddings(embedder, args.base)
        base_path = cache_dir() / "bench" / f"real-{embedder.fingerprint}-{args.base}.npy"
        documents = demo_documents(args.documents, seed=1, min_chars=300, max_chars=5000)
        queries = np.concatenate(embedder.encode_with_coverage([d.text for d in documents]))
        source = f"simulated from {len(base):,} real MiniLM embeddings; queries: {len(documents)} Wikipedia leads"
        del base
    else:
        embedder = HashingEmbedder(384)
        base_path = Path()
        texts = synthetic_descriptions(np.arange(10**9, 10**9 + 4 * args.documents))
        documents_text = [" ".join(texts[i : i + 4]) for i in range(0, len(texts), 4)]
        queries = np.concatenate(embedder.encode_with_coverage(documents_text))
        source = f"synthetic descriptions embedded by hashing-sim:384; queries: {args.documents} synthetic documents"
    per_doc = 11
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    sample = np.random.default_rng(0).choice(len(queries), min(args.exact_queries, len(queries)), replace=False)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    directory = work / "bank-index"
    free = shutil.disk_usage(work).free / 2**30
    needed = args.templates * 384 * 2 * 1.3 / 2**30
    if free < needed:
        raise SystemExit(f"{work}: {free:.0f} GB free, the bank needs about {needed:.0f} GB")
    auto = resolve_spec("auto", max(args.templates, 2_000_001), 384)  # the large-bank kind, whatever N
    compressed = ",".join(auto.split(",")[:2])
    m = int(compressed.split(",PQ")[1].split("x")[0])
    new_kind, old_kind = f"{compressed},RDisk", f"{compressed},Refine(PQ{2 * m})"

    print(f"bank: {args.templates:,} templates streamed in Arrow batches of {BANK_BATCH:,} (+1% repeated ids); "
          f"vectors {source}; {args.threads} threads", flush=True)
    context = multiprocessing.get_context("spawn")
    result: multiprocessing.Queue = context.Queue()
    child = context.Process(target=_child_build, args=({
        "templates": args.templates, "vectors": args.vectors, "base_path": str(base_path), "threads": args.threads,
        "directory": str(directory), "spec": new_kind, "train_size": args.train_size, "workers": args.workers},
        result))
    child.start()
    meta, build_seconds, peak_mb, children_mb = result.get()
    child.join()
    index_mb = (directory / "templates.faiss").stat().st_size / 2**20
    shards = sorted((directory / VECTORS_DIR).glob("shard-*.npy"))
    vectors_mb = sum(p.stat().st_size for p in shards) / 2**20
    templates_mb = (directory / "templates.arrow").stat().st_size / 2**20
    print(f"build ({new_kind}, workers {args.workers}): {build_seconds:,.0f} s; peak RSS of the build "
          f"{peak_mb:,.0f} MB" + (f" (largest worker {children_mb:,.0f} MB)" if args.workers > 1 else "")
          + f"; {meta['templates']:,} templates kept, {meta['duplicates_removed']:,} repeated ids dropped; "
          f"index file {index_mb:,.0f} MB; vectors on disk {vectors_mb:,.0f} MB float16 in {len(shards)} shards; "
          f"templates.arrow {templates_mb:,.0f} MB", flush=True)

    stored = VectorShards.open(directory / VECTORS_DIR, meta["vectors"]["shards"], meta["vectors"]["rows_per_shard"])
    start = time.perf_counter()
    truth = exact_top10_shards(stored, queries[sample])
    print(f"exact top-10 of {len(sample)} query vectors by brute force over the float16 shards: "
          f"{time.perf_counter() - start:,.0f} s", flush=True)

    print(f"{'kind':<32}{'nprobe':>7}{'k_rf':>5}{'build s':>9}{'RAM MB':>8}{'RSS+ MB':>9}{'ms/q cold':>10}"
          f"{'ms/q':>7}{'docs/s':>8}{'R@10':>7}{'10-R@10':>9}", flush=True)
    probes = [int(n) for n in args.nprobe.split(",")]
    factors = [int(f) for f in args.k_factor.split(",")]

    del stored
    for nprobe in probes:
        for factor in factors:
            evict(shards)  # each setting starts cold: a fresh load, its shards out of the page cache
            rss_before = rss_mb()
            new = TemplateIndex.load(directory, embedder if args.vectors == "hashing" else None,
                                     nprobe=nprobe, refine_k_factor=factor)
            new_rss = rss_mb() - rss_before
            cold, warm, _ = timed_search(new.search, queries, args.repeats)
            r10, ten10 = recalls(new.search(queries[sample], 10)[1], truth)
            print(f"{new_kind:<32}{nprobe:>7}{factor:>5}{build_seconds:>9,.0f}{index_mb:>8,.0f}{new_rss:>9,.0f}"
                  f"{1000 * cold / len(queries):>10.2f}{1000 * warm / len(queries):>7.2f}"
                  f"{len(queries) / per_doc / warm:>8,.0f}{r10:>7.3f}{ten10:>9.3f}", flush=True)
            del new
    if args.skip_old:
        return finish_bank(args, directory)
    stored = VectorShards.open(directory / VECTORS_DIR, meta["vectors"]["shards"], meta["vectors"]["rows_per_shard"])

    rss_before = rss_mb()
    start = time.perf_counter()
    old = faiss_index_from_shards(old_kind, stored, args.train_size)
    old_seconds = time.perf_counter() - start
    old_rss = rss_mb() - rss_before
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        faiss.write_index(old, str(Path(tmp) / "old.faiss"))
        old_mb = (Path(tmp) / "old.faiss").stat().st_size / 2**20
    for nprobe in probes:
        for factor in factors:
            set_search_params(old, nprobe=nprobe, refine_k_factor=factor)
            cold, warm, _ = timed_search(old.search, queries, args.repeats)
            r10, ten10 = recalls(old.search(queries[sample], 10)[1], truth)
            print(f"{old_kind:<32}{nprobe:>7}{factor:>5}{old_seconds:>9,.0f}{old_mb:>8,.0f}{old_rss:>9,.0f}"
                  f"{1000 * cold / len(queries):>10.2f}{1000 * warm / len(queries):>7.2f}"
                  f"{len(queries) / per_doc / warm:>8,.0f}{r10:>7.3f}{ten10:>9.3f}", flush=True)
    finish_bank(args, directory)


def finish_bank(args: argparse.Namespace, directory: Path) -> None:
    print("build s of the old kind: training and adding from the shards already embedded; RAM MB: the FAISS "
          "index (fast-scan kinds are read into memory); RSS+ MB: resident growth when loading (new) or "
          "building (old) it; ms/q: per query vector, k = 10, cold: the first pass after a fresh load with the "
          "shards out of the page cache.")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"peak RSS of the benchmark's main process: {peak:,.0f} MB")
    if not args.keep:
        shutil.rmtree(directory)


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
    parser.add_argument("--bank", action="store_true", help="measure the streaming bank build (see above)")
    parser.add_argument("--vectors", choices=["simulated", "hashing"], default="simulated",
                        help="--bank: simulated bank vectors, or synthetic descriptions through hashing-sim")
    parser.add_argument("--workers", type=int, default=1, help="--bank: embedding processes (hashing only)")
    parser.add_argument("--work-dir", default=tempfile.gettempdir(), help="--bank: where the bank is built")
    parser.add_argument("--keep", action="store_true", help="--bank: keep the built bank index")
    parser.add_argument("--skip-old", action="store_true", help="--bank: do not build the old Refine(PQ) kind")
    args = parser.parse_args()
    if args.bank:
        if args.vectors == "simulated" and args.workers > 1:
            parser.error("--workers > 1 needs --vectors hashing (workers build their embedder by name)")
        if args.exact_queries == 400:
            args.exact_queries = 1000
        if args.nprobe == "8,16,32":
            args.nprobe = "32"
        bank_main(args)
        return
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
