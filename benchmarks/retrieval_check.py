"""Labelled retrieval check on real data: does a document retrieve the template of the question it answers?

    .venv/bin/python benchmarks/retrieval_check.py --cache /tmp/retrieval_cache --seed 0 --threads 1

(add `--bank PATH [PATH ...]` for another distractor bank: Parquet files, folders of Parquet shards or globs,
with columns template_id, template, compatible_document_description; `--engine vllm` templatizes faster on a
CPU). Recorded run (2026-12-02, README "Measured figures"): 108 FAQ pairs, 78 valid gold templates (0.5B on
vLLM), the packaged bank of 611 real ShareGPT templates as distractors.

Data: real FAQ entries of three projects (benchmarks/faq_source.py: Celery, Scrapy and Django, read from
their pinned source distributions on PyPI). Each entry's question is a real user question and the entry's
text answers it, so the label is known: the document is the answer section, its gold template is the
template the project's templatize stage makes of its question.

Steps:
1. Templatize the questions with the project's templatize stage (built from a config, `--model` on
   `--engine`, default the 0.5B Qwen coder on llama.cpp), every request kept in a cache under `--cache`, so
   a rerun costs no model call. Questions whose template fails the stage's gates are reported and left out.
2. Mix the valid gold templates into a bank of distractors (`--bank`; default the packaged bank
   `fineinstructions/banks/sharegpt.parquet`, else /tmp/bank64/b.parquet); fewer than `--min-bank`
   distractors is reported as a warning.
3. Retrieve each answer section against the bank with the match stage exactly as configured by default
   (from_config over `stage_config({})`, index kind `auto` as the pipeline builds it) and report:
   recall@6 (the gold template among the 6 candidates), recall@1, MRR (over the 6 candidates),
   hubness (the share of documents that have the most frequent candidate template among their
   candidates; goal <= 5 %), the top hub templates with their counts and the ranks they entered at, the
   number of distinct templates ever proposed, and the same per rank position.
4. Variants measured in the same run with the same embedder and documents (the match stage itself, given
   another index object; nothing in src/ changes):
   - text embedded for a template: its compatible-document description (what stages/index.py embeds
     today), its template text (`<fi>` tags dropped, their descriptions kept), both as one text, or the
     mean of the two vectors;
   - hub damping by a CSLS-style per-template bias: score(d, t) - r(t) + mean r, where r(t) is the mean
     similarity of t to its `--csls-k` nearest neighbours among: a seeded sample of `--csls-docs` packaged
     Wikipedia leads (`wiki`), the other templates of the bank (`bank`, learned from the bank alone), or
     the documents being matched (`corpus`, transductive: what a pipeline could estimate from a sample of
     its own corpus);
   - diversification: MMR lambda 0.7 (the default), 0.5, and plain top-k (lambda 1).
   One table: variant -> recall@6, recall@1, MRR, hubness, distinct templates proposed.

`--out` (default CACHE/results.json) keeps the templates, candidates and metrics of every variant.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS.parent) not in sys.path:  # run as a script: `benchmarks` importable as a package
    sys.path.insert(0, str(BENCHMARKS.parent))

TOP_K = 6
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
FALLBACK_BANK = Path("/tmp/bank64/b.parquet")
BANK_COLUMNS = ("template_id", "template", "compatible_document_description")


# -- metrics (pure functions: tests/benchmarks/test_retrieval_check.py) ---------------------------------------


def gold_ranks(candidates: Mapping[str, Sequence[str]], gold: Mapping[str, str]) -> dict[str, int | None]:
    """Per document (every key of `gold`), the 1-based rank of its gold template among its candidates, or None.
    A document without candidates (e.g. refused by the stage) counts as a miss."""
    ranks: dict[str, int | None] = {}
    for doc, target in gold.items():
        found = list(candidates.get(doc, ()))
        ranks[doc] = found.index(target) + 1 if target in found else None
    return ranks


def recall_at(ranks: Mapping[str, int | None], k: int) -> float:
    """Share of documents whose gold template is among their first k candidates."""
    return sum(r is not None and r <= k for r in ranks.values()) / max(1, len(ranks))


def mean_reciprocal_rank(ranks: Mapping[str, int | None]) -> float:
    """Mean of 1/rank of the gold template (0 where it is not among the candidates)."""
    return sum(1.0 / r for r in ranks.values() if r is not None) / max(1, len(ranks))


def hubness(candidates: Mapping[str, Sequence[str]], n_documents: int | None = None) -> tuple[float, str | None, int]:
    """(share, template, count): the template that is a candidate of the most documents, and the share of
    documents (of `n_documents`, default those in `candidates`) that have it among their candidates."""
    counts = Counter(t for found in candidates.values() for t in set(found))
    if not counts:
        return 0.0, None, 0
    template, count = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    return count / max(1, n_documents if n_documents is not None else len(candidates)), template, count


def hubs(candidates: Mapping[str, Sequence[str]], top: int = 5) -> list[tuple[str, int, dict[int, int]]]:
    """The `top` most frequent candidate templates: (template, documents, {rank entered at: documents})."""
    counts: Counter[str] = Counter()
    entered: dict[str, Counter[int]] = {}
    for found in candidates.values():
        for rank, template in enumerate(found, 1):
            if template in found[: rank - 1]:
                continue
            counts[template] += 1
            entered.setdefault(template, Counter())[rank] += 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(t, c, dict(sorted(entered[t].items()))) for t, c in ordered]


def per_rank(candidates: Mapping[str, Sequence[str]], top_k: int = TOP_K,
             n_documents: int | None = None) -> list[dict[str, Any]]:
    """Per rank position r (1-based): distinct templates proposed at r, and the most frequent one's share of
    documents (hubness restricted to that position)."""
    n = n_documents if n_documents is not None else len(candidates)
    rows = []
    for r in range(1, top_k + 1):
        at = Counter(found[r - 1] for found in candidates.values() if len(found) >= r)
        top_count = max(at.values()) if at else 0
        rows.append({"rank": r, "distinct": len(at), "top_share": top_count / max(1, n),
                     "documents": sum(at.values())})
    return rows


@dataclass
class Metrics:
    documents: int
    recall_at_6: float
    recall_at_1: float
    mrr: float
    hubness: float
    hub_template: str | None
    hub_count: int
    distinct: int
    distractor_hubness: float = 0.0  # hubness counting only templates that are no document's gold
    distractor_hub: str | None = None
    top_hubs: list[tuple[str, int, dict[int, int]]] = field(default_factory=list)
    ranks: list[dict[str, Any]] = field(default_factory=list)


def evaluate(candidates: Mapping[str, Sequence[str]], gold: Mapping[str, str], top_k: int = TOP_K) -> Metrics:
    """Every metric of one retrieval run over the documents of `gold` (a document missing from
    `candidates` has none)."""
    ranks = gold_ranks(candidates, gold)
    full = {doc: list(candidates.get(doc, ())) for doc in gold}
    share, template, count = hubness(full, len(gold))
    golds = set(gold.values())
    d_share, d_template, _ = hubness({doc: [t for t in found if t not in golds] for doc, found in full.items()},
                                     len(gold))
    return Metrics(
        documents=len(gold), recall_at_6=recall_at(ranks, 6), recall_at_1=recall_at(ranks, 1),
        mrr=mean_reciprocal_rank(ranks), hubness=share, hub_template=template, hub_count=count,
        distinct=len({t for found in full.values() for t in found}), distractor_hubness=d_share,
        distractor_hub=d_template, top_hubs=hubs(full),
        ranks=per_rank(full, top_k, len(gold)))


def candidate_lists(matches: Iterable[Any]) -> dict[str, list[str]]:
    """Match records -> each document's candidate template ids in rank order."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for m in matches:
        ranked.setdefault(m.document_id, []).append((m.rank, m.template_id))
    return {doc: [t for _, t in sorted(rows)] for doc, rows in ranked.items()}


def template_bias(template_vectors: np.ndarray, reference: np.ndarray | None, k: int,
                  exclude_self: bool = False, block: int = 4096) -> np.ndarray:
    """CSLS-style hub bias per template: mean similarity to its k nearest reference vectors (documents; or,
    with `reference` None, the other templates), centred so the mean bias is 0 (scores keep their scale)."""
    ref = template_vectors if reference is None else reference
    exclude_self = exclude_self or reference is None
    k = max(1, min(k, len(ref) - (1 if exclude_self else 0)))
    r = np.empty(len(template_vectors), dtype=np.float64)
    for start in range(0, len(template_vectors), block):
        sims = template_vectors[start : start + block] @ ref.T
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, rows + start] = -np.inf
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        r[start : start + block] = top.mean(axis=1)
    return (r - r.mean()).astype(np.float32)


# -- data ------------------------------------------------------------------------------------------------------


def default_bank() -> Path:
    from fineinstructions.io.sources import BANKS_DIR

    packaged = BANKS_DIR / "sharegpt.parquet"
    return packaged if packaged.is_file() else FALLBACK_BANK


def bank_files(paths: Sequence[str | Path]) -> list[Path]:
    """Parquet files named by paths: files, folders (their *.parquet, recursively, without rejects/) or globs."""
    files: list[Path] = []
    for item in paths:
        item = str(item)
        matched = [Path(p) for p in sorted(glob.glob(item))] if any(c in item for c in "*?[") else [Path(item)]
        for path in matched:
            if path.is_dir():
                files += [p for p in sorted(path.rglob("*.parquet")) if "rejects" not in p.parts]
            elif path.is_file():
                files.append(path)
            else:
                raise SystemExit(f"--bank: {path} does not exist")
    return files


def read_bank(paths: Sequence[str | Path]) -> list[Any]:
    """Templates of the bank files, each id once (first kept)."""
    import pyarrow.parquet as pq

    from fineinstructions.records import Template

    out: dict[str, Template] = {}
    for path in bank_files(paths):
        table = pq.read_table(path)
        missing = [c for c in BANK_COLUMNS if c not in table.column_names]
        if missing:
            raise SystemExit(f"--bank: {path} lacks column(s) {missing} (needs {', '.join(BANK_COLUMNS)})")
        popularity = table.column("popularity").to_pylist() if "popularity" in table.column_names else None
        for i, row in enumerate(table.select(list(BANK_COLUMNS)).to_pylist()):
            if row["template_id"] not in out:
                out[row["template_id"]] = Template(**row, popularity=max(1, int(popularity[i])) if popularity else 1)
    return list(out.values())


# -- the match stage over other indexes --------------------------------------------------------------------------


class CachingEmbedder:
    """The match stage's embedder, remembering each document's coverage vectors: every variant of the run
    embeds the documents once."""

    def __init__(self, embedder: Any):
        self.inner = embedder
        self._coverage: dict[tuple[str, int, float, float, int], np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode(texts)

    def encode_with_coverage(self, texts: Sequence[str], chunks: int = 10, sigma: float = 0.05, alpha: float = 1.0,
                             max_windows: int = 64) -> list[np.ndarray]:
        keys = [(t, chunks, sigma, alpha, max_windows) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._coverage))
        if todo:
            vectors = self.inner.encode_with_coverage([k[0] for k in todo], chunks, sigma, alpha, max_windows)
            self._coverage.update(zip(todo, vectors, strict=True))
        return [self._coverage[k] for k in keys]


def variant_index(table: Any, vectors: np.ndarray, embedder: Any, bias: np.ndarray | None = None) -> Any:
    """A TemplateIndex over `table` (rows in order) whose vectors are `vectors`, searched exactly; with `bias`,
    each template's score is lowered by its bias before the top-k is taken (CSLS-style hub damping)."""
    import faiss

    from fineinstructions.stages.index import TemplateIndex

    class BiasedIndex(TemplateIndex):
        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            if self.bias is None:
                return super().search(queries, k)
            k = min(k, self.ntotal)
            scores = np.asarray(queries, dtype=np.float32) @ self.matrix.T - self.bias
            ids = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            part = np.take_along_axis(scores, ids, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            return np.take_along_axis(part, order, axis=1), np.take_along_axis(ids, order, axis=1).astype(np.int64)

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    index = BiasedIndex(flat, table, embedder.model_id, embedder.fingerprint, "Flat")
    index.matrix = vectors
    index.bias = bias
    return index


def run_match(config: Any, embedder: CachingEmbedder, index: Any, documents: Sequence[Any],
              hub_bias: np.ndarray | None = None, hub_damping: float = 0.0) -> tuple[dict, list]:
    """The match stage built from `config` over `index` (with this hub bias and weight, when given):
    (candidate lists, rejected documents)."""
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.registry import stage_class

    context = StageContext(config)
    context.__dict__["embedder"] = embedder  # the shared (caching) embedder instead of a fresh model
    context.__dict__["hub_bias"] = None  # given here (a stage run alone would take its placeholder source's)
    context.use_index(index, "retrieval_check")
    stage = stage_class("match").from_config(config, context)
    stage.hub_bias, stage.hub_damping = hub_bias, hub_damping if hub_bias is not None else 0.0
    result = stage.process(documents)
    return candidate_lists(result.records), result.rejected


# -- the run -------------------------------------------------------------------------------------------------------


def templatize(pairs: Sequence[Any], args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from fineinstructions.backends.cache import RequestCache
    from fineinstructions.backends.factory import BackendPool
    from fineinstructions.config import stage_config
    from fineinstructions.records import Query
    from fineinstructions.stages.base import Rejected
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.registry import stage_class

    generator: dict[str, Any] = {"kind": args.engine, "model": args.model}
    if args.threads:
        generator["n_threads"] = args.threads
    config = stage_config({"generator": generator})
    args.cache.mkdir(parents=True, exist_ok=True)
    context = StageContext(config, backends=BackendPool(RequestCache(args.cache / "requests.sqlite")))
    stage = stage_class("templatize").from_config(config, context)
    queries = [Query(query_id=p.pair_id, text=p.question, source=f"faq-{p.project}") for p in pairs]
    templates: list[Any] = []
    rejected: list[Rejected] = []
    start = time.perf_counter()
    for at in range(0, len(queries), 8):  # the cache commits every call: a stopped run keeps its answers
        result = stage.process(queries[at : at + 8])
        templates += result.records
        rejected += result.rejected
        print(f"  templatized {at + len(queries[at : at + 8])}/{len(queries)} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    context.close()
    return templates, rejected


def fmt_ranks(entered: Mapping[int, int]) -> str:
    return ", ".join(f"r{r}:{c}" for r, c in sorted(entered.items()))


def main() -> None:
    from benchmarks.faq_source import load_pairs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="templatize model (a registry name or GGUF path)")
    parser.add_argument("--engine", default="llamacpp", help="backend kind serving --model")
    parser.add_argument("--threads", type=int, default=None,
                        help="engine threads (llama.cpp: 1 is fastest on a machine busy with other work)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/retrieval_cache"),
                        help="folder of the request cache (reruns are free)")
    parser.add_argument("--bank", nargs="+", default=None,
                        help="distractor templates: Parquet files, folders of shards or globs (default: the "
                             "packaged sharegpt bank, else /tmp/bank64/b.parquet)")
    parser.add_argument("--min-bank", type=int, default=1000, help="warn below this many distractors")
    parser.add_argument("--faq-dir", type=Path, default=None, help="folder of the FAQ sdists (fetched if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the Wikipedia sample of the CSLS bias")
    parser.add_argument("--csls-k", type=int, default=10)
    parser.add_argument("--hub-depth", type=int, default=100, help="templates each reference retrieves (stage damping)")
    parser.add_argument("--csls-docs", type=int, default=1000, help="Wikipedia leads that estimate the wiki bias")
    parser.add_argument("--limit", type=int, default=None, help="use the first N FAQ pairs only (a quick look)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default CACHE/results.json)")
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)

    from fineinstructions.config import stage_config
    from fineinstructions.io.sources import wikipedia_documents
    from fineinstructions.records import Document
    from fineinstructions.stages.context import StageContext
    from fineinstructions.stages.index import TemplateIndex, embedded_text

    # 1. the labelled pairs and their gold templates
    pairs, dropped = load_pairs(args.faq_dir)
    pairs = pairs[: args.limit] if args.limit else pairs
    projects = Counter(p.project for p in pairs)
    print(f"FAQ pairs: {len(pairs)} ({', '.join(f'{k} {v}' for k, v in projects.items())}); "
          f"dropped {len(dropped)}: {dict(Counter(why for _, why in dropped))}")
    t0 = time.perf_counter()
    gold_templates, rejected = templatize(pairs, args)
    print(f"templatize ({args.model} on {args.engine}, cache {args.cache}): {len(gold_templates)}/{len(pairs)} "
          f"valid in {time.perf_counter() - t0:.0f} s; {len(rejected)} invalid, excluded:")
    for r in rejected:
        print(f"  {r.reason.split(':')[0]:<28} {r.row['text'][:70]!r} -> {str(r.row.get('output', ''))[:90]!r}")
    by_pair = {t.query_id: t for t in gold_templates}
    print("examples of gold templates:")
    for t in gold_templates[:6]:
        print(f"  {t.query[:70]!r}\n    -> {t.template!r}\n       [{t.compatible_document_description[:110]}]")

    # 2. the bank: gold templates first (an identical distractor shares the gold id), then the distractors
    bank_paths = args.bank or [default_bank()]
    bank = read_bank(bank_paths)
    gold_ids = {t.template_id for t in gold_templates}
    distractors = [t for t in bank if t.template_id not in gold_ids]
    print(f"bank: {len(distractors)} distractor templates from {', '.join(map(str, bank_paths))} "
          f"(+{len(gold_ids)} distinct gold templates; {len(bank) - len(distractors)} distractors equal a gold one)")
    if len(distractors) < args.min_bank:
        print(f"WARNING: {len(distractors)} distractors < --min-bank {args.min_bank}: hubness and recall are "
              f"not comparable with a real-size bank")
    documents = [Document(document_id=p.pair_id, text=p.answer, source=f"faq-{p.project}")
                 for p in pairs if p.pair_id in by_pair]
    gold = {d.document_id: by_pair[d.document_id].template_id for d in documents}

    # 3. the match stage as configured by default
    config = stage_config({})
    context = StageContext(config)
    embedder = CachingEmbedder(context.embedder)
    t0 = time.perf_counter()
    index = TemplateIndex.build(gold_templates + distractors, embedder, config.match.index, seed=args.seed,
                                text=config.match.template_text)
    print(f"index ({index.spec}, {embedder.model_id}, embeds match.template_text {config.match.template_text!r}): "
          f"{index.ntotal} templates in {time.perf_counter() - t0:.0f} s")
    from fineinstructions.stages.hubness import hub_bias

    t0 = time.perf_counter()
    mc = config.match
    # the pipeline's default hub bias: from the run's own documents (here: the answer sections), global vectors
    document_vectors = embedder.encode([d.text for d in documents])
    default_bias = hub_bias(index, document_vectors, mc.hub_k, mc.hub_depth) if mc.hub_damping else None
    if mc.hub_damping and mc.hub_reference != "documents":
        raise SystemExit(f"match.hub_reference {mc.hub_reference!r}: this check computes the 'documents' bias")
    default_candidates, refused = run_match(config, embedder, index, documents, default_bias, mc.hub_damping)
    print(f"match stage (defaults: top_k {mc.top_k}, coverage_chunks {mc.coverage_chunks}, per_vector_k "
          f"{mc.per_vector_k}, mmr_lambda {mc.mmr_lambda}, min_score {mc.min_score}, hub_damping {mc.hub_damping} "
          f"from the documents): {len(documents)} documents in {time.perf_counter() - t0:.0f} s, "
          f"{len(refused)} refused {dict(Counter(r.reason.split(':')[0] for r in refused))}")
    templates_by_id = {t.template_id: t for t in index.templates}
    result = evaluate(default_candidates, gold)
    print(f"\n== default match stage over {result.documents} FAQ answer sections, {index.ntotal} templates ==")
    print(f"gold recall@6 {result.recall_at_6:.3f}   recall@1 {result.recall_at_1:.3f}   MRR {result.mrr:.3f}")
    print(f"hubness {100 * result.hubness:.1f} % (goal <= 5 %): the top template is a candidate of "
          f"{result.hub_count}/{result.documents} documents; distinct templates proposed: {result.distinct} "
          f"(of {TOP_K * result.documents} slots)")
    print(f"hubness among distractors only (templates that are no document's gold): "
          f"{100 * result.distractor_hubness:.1f} %")
    print("top hub templates (documents, ranks entered at):")
    for template_id, count, entered in result.top_hubs:
        t = templates_by_id[template_id]
        role = "gold" if template_id in set(gold.values()) else "distractor"
        print(f"  {count:4d}  [{fmt_ranks(entered)}]  {role}: {t.template[:80]!r}\n"
              f"        desc: {t.compatible_document_description[:100]!r}")
    print("per rank: rank  distinct  top-template share  gold found here")
    ranks = gold_ranks(default_candidates, gold)
    for row in result.ranks:
        hits = sum(r == row["rank"] for r in ranks.values())
        print(f"  {row['rank']:4d}  {row['distinct']:8d}  {100 * row['top_share']:16.1f} %  {hits:5d}")

    # 4. variants: text embedded x hub damping x diversification, on the same embedder and documents
    t0 = time.perf_counter()
    table = index.table
    kept = index.templates
    description_vectors, template_vectors, both_vectors = (
        embedder.encode([embedded_text(t.template, t.compatible_document_description, text) for t in kept])
        for text in ("description", "template", "both"))
    mean_vectors = description_vectors + template_vectors
    mean_vectors /= np.linalg.norm(mean_vectors, axis=1, keepdims=True)
    texts = {"description": description_vectors, "template": template_vectors, "template+desc": both_vectors,
             "mean(desc,tmpl)": mean_vectors}
    leads = [d for d in wikipedia_documents() if len(d.text.split()) >= 20]
    sample = random.Random(args.seed).sample(leads, min(args.csls_docs, len(leads)))
    wiki_vectors = embedder.encode([d.text for d in sample])
    corpus_vectors = np.stack([v[0] for v in embedder.encode_with_coverage(
        [d.text for d in documents], config.match.coverage_chunks, config.match.sigma, config.match.alpha,
        config.match.max_windows)])
    print(f"\nvariant vectors and CSLS references ({len(sample)} Wikipedia leads, {len(documents)} documents) "
          f"in {time.perf_counter() - t0:.0f} s")
    references = {"none": None, "csls-wiki": wiki_vectors, "csls-bank": "bank", "csls-corpus": corpus_vectors}
    lambdas = {"mmr 0.7": 0.7, "mmr 0.5": 0.5, "plain top-k": 1.0}
    rows: list[dict[str, Any]] = []
    reproduced = None
    default_text = {"description": "description", "template": "template", "both": "template+desc"}[
        config.match.template_text]
    for text_name, vectors in texts.items():
        for damping, reference in references.items():
            bias = None
            if reference is not None:
                bias = template_bias(vectors, None if isinstance(reference, str) else reference, args.csls_k)
            variant = variant_index(table, vectors, embedder, bias)
            for div_name, lam in lambdas.items():
                vconfig = stage_config({"match": {"mmr_lambda": lam}})
                candidates, _ = run_match(vconfig, embedder, variant, documents)
                m = evaluate(candidates, gold)
                hub = templates_by_id[m.hub_template].template if m.hub_template else ""
                rows.append({"text": text_name, "damping": damping, "diversify": div_name, **asdict(m),
                             "hub_text": hub, "candidates": candidates})
    # 5. the stage's own hub damping (stages/hubness.py): the bias estimated by reverse search of the default
    # index from a reference sample, applied to each document's candidates before diversification
    wiki_all = np.concatenate(embedder.encode_with_coverage(
        [d.text for d in sample], config.match.coverage_chunks, config.match.sigma, config.match.alpha,
        config.match.max_windows))
    stage_references = {"wiki": wiki_vectors, "wiki(all vectors)": wiki_all, "corpus": document_vectors}
    for ref_name, reference in stage_references.items():
        bias = hub_bias(index, reference, k=args.csls_k, depth=args.hub_depth)
        for weight in (0.5, 1.0, 2.0):
            candidates, _ = run_match(config, embedder, index, documents, bias, weight)
            if (ref_name, weight, args.csls_k, args.hub_depth) == ("corpus", mc.hub_damping, mc.hub_k, mc.hub_depth):
                reproduced = candidates == default_candidates
            m = evaluate(candidates, gold)
            hub = templates_by_id[m.hub_template].template if m.hub_template else ""
            rows.append({"text": default_text, "damping": f"stage {ref_name} x{weight:g}",
                         "diversify": f"mmr {config.match.mmr_lambda:g}", **asdict(m), "hub_text": hub,
                         "candidates": candidates})
    print(f"the variant '{default_text} / stage corpus x{mc.hub_damping:g} / mmr {mc.mmr_lambda:g}' reproduces the "
          f"default stage's candidates: {reproduced}")
    print(f"\n== variants ({len(documents)} documents, {index.ntotal} templates; hubness goal <= 5 %) ==")
    header = f"{'text embedded':<16}{'hub damping':<28}{'diversify':<13}{'R@6':>7}{'R@1':>7}{'MRR':>7}" \
             f"{'hub %':>7}{'distr %':>8}{'distinct':>9}  top hub"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['text']:<16}{row['damping']:<28}{row['diversify']:<13}{row['recall_at_6']:>7.3f}"
              f"{row['recall_at_1']:>7.3f}{row['mrr']:>7.3f}{100 * row['hubness']:>7.1f}"
              f"{100 * row['distractor_hubness']:>8.1f}{row['distinct']:>9d}  "
              f"{row['hub_count']:>3d}x {row['hub_text'][:44]!r}")

    out = args.out or args.cache / "results.json"
    out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "pairs": [asdict(p) for p in pairs],
        "gold_templates": [t.model_dump() for t in gold_templates],
        "invalid": [r.row | {"reason": r.reason} for r in rejected],
        "bank": {"paths": [str(p) for p in bank_paths], "distractors": len(distractors), "indexed": index.ntotal},
        "default": asdict(result) | {"candidates": default_candidates},
        "variants": rows,
    }, indent=1, default=str))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
