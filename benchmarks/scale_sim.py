"""Scale simulation: the whole document phase at 10k, 100k and 1M documents, with the model and the embedder
replaced by stand-ins that cost (almost) nothing, so what is measured is the pipeline itself.

    .venv/bin/python -m benchmarks.scale_sim                                   # 10k, 100k, 1M; 2 ranks
    .venv/bin/python -m benchmarks.scale_sim --sizes 2000 --ray-size 2000      # the small size the tests run

Documents are the packaged Wikipedia leads with their sentences shuffled (a unique id each), in Parquet
files of 50k; the template bank is synthetic (one template per lead title); the engine is a scripted
stand-in that follows each prompt's output contract with no delay (`SimulationEngine`); embeddings come
from the hashing embedder (`hashing-sim`, for simulation and tests only). Matching uses one global and 5
local vectors and 6 candidates per document, as the paper does. Each size runs in a fresh driver process,
its ranks in child processes; it prints side by side: driver and per-rank peak RSS, documents/s per rank,
dataset parts against their target size, the same job under the local and the Ray executor (row for row),
and a projection to 1B pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fineinstructions.backends.base import BackendStats, Conversation, Generation, SamplingParams  # noqa: E402
from fineinstructions.config import BackendConfig, PipelineConfig, RunConfig, SourceConfig  # noqa: E402
from fineinstructions.records import Template  # noqa: E402

DOCUMENTS_PER_FILE = 50_000


class SimulationEngine:
    """A scripted engine for simulation: follows the instantiate and judge contracts for any document, at no
    cost, and keeps nothing (unlike the tests' FakeBackend, which logs every call)."""

    model_id = "simulation"

    def __init__(self) -> None:
        self.stats = BackendStats()

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        start = time.perf_counter()
        out = [Generation(text := respond(c), len(c[-1]["content"]) // 4, len(text) // 4) for c in conversations]
        self.stats.add(out, time.perf_counter() - start)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) // 4 for t in texts]

    def close(self) -> None:
        pass


def engine() -> SimulationEngine:
    """The custom-backend factory the simulation's config names (`benchmarks.scale_sim:engine`)."""
    return SimulationEngine()


def respond(conversation: Conversation) -> str:
    """Judge: 5. Instantiate: the template's variable filled with a word of the document, and an excerpt
    reference to one of its sentences (which one depends on the template and the document's opening, so a
    document's pairs differ, and documents made from the same lead mostly do too)."""
    system, user = conversation[0]["content"], conversation[-1]["content"]
    if system.startswith("You are a strict judge"):
        return "<feedback>Grounded.</feedback><score>5</score>"
    document = user.split("DOCUMENT:\n", 1)[1].split("\n\nTEMPLATE:", 1)[0]
    template = user.split("TEMPLATE:\n", 1)[1]
    sentences = [s.split() for s in re.split(r"(?<=\.)\s", document) if len(s.split()) >= 6]
    sentence = sentences[sum(map(ord, template + document[:80])) % len(sentences)]
    instruction = re.sub(r"<fi>.*?</fi>", f"{sentence[0]} {sentence[1]}", template)
    return (f"<instruction>{instruction}</instruction>\n<answer><excerpt>{' '.join(sentence[:3])}<...>"
            f"{' '.join(sentence[-3:])}</excerpt></answer>")


# -- data ------------------------------------------------------------------------------------------

def leads() -> list[tuple[str, list[str]]]:
    from fineinstructions.io.sources import wikipedia_documents

    out = []
    for doc in wikipedia_documents():
        sentences = [s for s in re.split(r"(?<=\.)\s+", doc.text) if len(s.split()) >= 6]
        if len(sentences) >= 3:
            out.append((doc.title, sentences))
    return out


def write_documents(folder: Path, n: int) -> Path:
    """n documents (shuffled-sentence Wikipedia leads, unique ids) in Parquet files of 50k; reused if there."""
    target = folder / f"documents-{n}"
    if (target / "done").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    pool = leads()
    for first in range(0, n, DOCUMENTS_PER_FILE):
        ids, texts, titles = [], [], []
        for i in range(first, min(n, first + DOCUMENTS_PER_FILE)):
            title, sentences = pool[i % len(pool)]
            shuffled = list(sentences)
            random.Random(i).shuffle(shuffled)
            ids.append(f"sim-{i:09d}")
            texts.append(" ".join(shuffled))
            titles.append(title)
        pq.write_table(pa.table({"id": ids, "text": texts, "title": titles}),
                       target / f"documents-{first // DOCUMENTS_PER_FILE:05d}.parquet", row_group_size=1_000)
    (target / "done").write_text("")
    return target


def write_bank(folder: Path, size: int) -> Path:
    """A synthetic template bank: one template per lead title (the bank a real run would bring)."""
    path = folder / f"bank-{size}.parquet"
    if not path.is_file():
        pool = leads()
        templates = [Template(template_id=f"sim-t{j:07d}",
                              template=f"What is known about <fi>{pool[j % len(pool)][0].split()[0]} or a "
                                       f"similar subject</fi>?",
                              compatible_document_description=f"An encyclopedia article about "
                                                              f"{pool[j % len(pool)][0]}.")
                     for j in range(size)]
        pq.write_table(Template.to_table(templates), path)
    return path


def config(folder: Path, documents: Path, bank: Path, out: Path, ranks: int, part_bytes: int,
           executor: str = "local") -> PipelineConfig:
    cfg = PipelineConfig(
        templates=SourceConfig(path=str(bank)),
        documents=SourceConfig(path=str(documents)),
        generator=BackendConfig(kind="custom", model="benchmarks.scale_sim:engine"),
        run=RunConfig(output_dir=str(out), shard_size=256, batch_size=64, ranks=ranks, workers=ranks,
                      executor=executor, part_bytes=part_bytes, request_cache=False, cpus_per_worker=1.0),
    )
    cfg.match.embedder = "hashing-sim"
    cfg.match.coverage_chunks = 5  # one global + 5 local vectors, 6 candidates: the paper's matching
    cfg.match.top_k = 6
    cfg.match.max_template_uses = None
    return cfg


# -- one run (in its own driver process) -------------------------------------------------------------

def run_one(args: argparse.Namespace) -> None:
    from fineinstructions.pipeline import Pipeline
    from fineinstructions.ranks.steps import GenerateStep, RunJob

    cfg = PipelineConfig.from_yaml(args.one)
    start = time.perf_counter()
    summary = Pipeline(cfg, show_progress=False).run()
    seconds = time.perf_counter() - start
    job = RunJob.from_folder(cfg.run.output_dir)
    markers = [GenerateStep(job).marker(r) or {} for r in range(cfg.run.ranks)]
    parts = sorted(Path(cfg.run.output_dir, "dataset").glob("rank-*/part-*.parquet"))
    print(json.dumps({
        "seconds": seconds,
        "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rank_rss_mb": [m.get("peak_rss_mb") for m in markers],
        "rank_seconds": [m.get("seconds") for m in markers],
        "rank_documents": [m.get("documents") for m in markers],
        "pairs": summary["quality"]["pairs"],
        "part_bytes": [p.stat().st_size for p in parts],
        # every part but each rank's last, which holds what was left: these must be within +-20 % of the target
        "full_part_bytes": [p.stat().st_size for p in parts if p != max(q for q in parts if q.parent == p.parent)],
        "duplicates_removed": summary["quality"]["duplicate_pairs_removed"],
        "stage_seconds": {k: v["seconds"] for k, v in summary["stages"].items()},
    }))


def measure(cfg: PipelineConfig, folder: Path) -> dict[str, Any]:
    path = folder / f"{Path(cfg.run.output_dir).name}.yaml"
    path.write_text(cfg.to_yaml())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale_sim", "--one", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dataset_rows(out: Path) -> list[tuple[str, str, str]]:
    columns = ["document_id", "template_id", "answer"]
    parts = out.glob("dataset/rank-*/part-*.parquet")
    return sorted((r["document_id"], r["template_id"], r["answer"]) for part in parts
                  for r in pq.read_table(part, columns=columns).to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--templates", type=int, default=5000)
    parser.add_argument("--part-mb", type=float, default=4.0, help="dataset part target (MB)")
    parser.add_argument("--ray-size", type=int, default=100_000, help="also run this size under Ray (0: skip)")
    parser.add_argument("--folder", default=str(ROOT / "runs" / "scale-sim"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    bank = write_bank(folder, args.templates)
    part_bytes = int(args.part_mb * 2**20)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        documents = write_documents(folder, n)
        out = folder / f"local-{n}"
        results[n] = measure(config(folder, documents, bank, out, args.ranks, part_bytes), folder)
        r = results[n]
        rate = [d / s for d, s in zip(r["rank_documents"], r["rank_seconds"], strict=True)]
        print(f"{n:>9,} documents: {r['pairs']:,} pairs in {r['seconds']:.0f} s; driver peak RSS "
              f"{r['driver_rss_mb']:.0f} MB; rank peak RSS {', '.join(f'{x:.0f}' for x in r['rank_rss_mb'])} MB; "
              f"{', '.join(f'{x:.0f}' for x in rate)} documents/s per rank; stage seconds "
              f"{ {k: round(v) for k, v in r['stage_seconds'].items()} }", flush=True)
    print("\n| documents | pairs | driver peak RSS | rank peak RSS (max) | documents/s per rank | parts | "
          "part size vs target (min-max, all but the last per rank) |")
    print("|---|---|---|---|---|---|---|")
    for n, r in results.items():
        rate = min(d / s for d, s in zip(r["rank_documents"], r["rank_seconds"], strict=True))
        full = [b / part_bytes for b in r["full_part_bytes"]]
        within = f"{min(full):.2f}-{max(full):.2f}" if full else "- (one part per rank)"
        print(f"| {n:,} | {r['pairs']:,} | {r['driver_rss_mb']:.0f} MB | {max(r['rank_rss_mb']):.0f} MB | "
              f"{rate:.0f} | {len(r['part_bytes'])} | {within} |")
    first, last = results[sizes[0]], results[sizes[-1]]
    print(f"\nRSS({sizes[-1]:,}) / RSS({sizes[0]:,}): driver {last['driver_rss_mb'] / first['driver_rss_mb']:.2f}, "
          f"rank {max(last['rank_rss_mb']) / max(first['rank_rss_mb']):.2f} (goal <= 1.2)")
    if args.ray_size:
        documents = write_documents(folder, args.ray_size)
        local_out, ray_out = folder / f"local-{args.ray_size}", folder / f"ray-{args.ray_size}"
        if args.ray_size not in results:
            measure(config(folder, documents, bank, local_out, args.ranks, part_bytes), folder)
        ray = measure(config(folder, documents, bank, ray_out, args.ranks, part_bytes, "ray"), folder)
        same = dataset_rows(local_out) == dataset_rows(ray_out)
        print(f"\n{args.ray_size:,} documents under Ray: {ray['pairs']:,} pairs in {ray['seconds']:.0f} s; "
              f"identical to the local executor's dataset row for row: {same}")
    bytes_per_pair = sum(last["part_bytes"]) / max(last["pairs"], 1)
    projection(bytes_per_pair, max(last["rank_rss_mb"]), min(
        d / sec for d, sec in zip(last["rank_documents"], last["rank_seconds"], strict=True)))


def projection(bytes_per_pair: float, rank_rss_mb: float, documents_per_s: float) -> None:
    """1B kept pairs at the paper's yield (6 candidates, ~3 kept per document): ranks, files, storage, and the
    GPU-hours as a formula of the engine's throughput (no GPU figures were measured here)."""
    pairs, kept_per_document, candidates = 1e9, 3, 6
    documents = pairs / kept_per_document
    requests = documents * candidates  # instantiate requests; the judge sees the instantiated share of them
    storage = pairs * bytes_per_pair
    print(f"\nProjection to 1B pairs ({kept_per_document} kept of {candidates} candidates per document, as the paper: "
          f"{documents:,.0f} documents, {requests:,.0f} instantiate requests; {bytes_per_pair:.0f} bytes/pair in "
          f"Parquet as measured here, real answers are longer):")
    print("| ranks | documents per rank | dataset files of 512 MB | storage | pipeline CPU-hours (no model) |")
    print("|---|---|---|---|---|")
    for ranks in (64, 256, 1024):
        print(f"| {ranks} | {documents / ranks:,.0f} | {storage / 2**29:,.0f} | {storage / 1e12:.2f} TB | "
              f"{documents / documents_per_s / 3600:,.0f} in all, rank peak RSS ~{rank_rss_mb:.0f} MB |")
    print("GPU-hours = requests x (prompt tokens / prefill tok/s + completion tokens / generated tok/s) / 3600, "
          "instantiate and judge each; e.g. 2e9 instantiate requests x (1,500 / P + 250 / G) / 3600 with P, G the "
          "per-GPU figures of benchmarks/gpu_throughput.py.")


if __name__ == "__main__":
    main()
