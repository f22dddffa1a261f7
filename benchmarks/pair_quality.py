"""Pair quality at demo scale with the embedded 1.5B model: the issue's quality goals, and pairs to read.

    .venv/bin/python benchmarks/pair_quality.py --out runs/quality --queries 400 --documents 150

Steps (each resumes from its files in `--out`):
  1. a seeded topical sample of real ShareGPT questions and the Wikipedia leads closest to them
     (`queries.jsonl`, `documents.jsonl`);
  2. templatize the questions (`templates/`, the `fineinstructions templatize` command);
  3. the pipeline on the leads with that template bank: match, instantiate, judge, filter (`run/`);
  4. the figures: share of kept answers with excerpt coverage >= 0.8, kept answers with unresolved
     markers, judge pass rate, the largest share of kept pairs from one template, answer characters
     per generated token — and `--show` random kept pairs for a human read.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.backends.models import DEFAULT_EMBEDDER, DEFAULT_GENERATOR
from fineinstructions.config import BackendConfig, MatchConfig, PipelineConfig, RunConfig, SourceConfig
from fineinstructions.io.atomic import write_text_atomic
from fineinstructions.io.sources import topical_demo_sample
from fineinstructions.io.writers import read_records
from fineinstructions.pipeline import Pipeline, configure_logging
from fineinstructions.records import Pair


def sample_inputs(out: Path, queries: int, documents: int, min_similarity: float, seed: int) -> None:
    if (out / "documents.jsonl").is_file():
        return
    chosen, leads = topical_demo_sample(queries, documents, Embedder(DEFAULT_EMBEDDER), seed,
                                        min_similarity=min_similarity)
    write_text_atomic(out / "queries.jsonl", "".join(json.dumps({"id": q.query_id, "text": q.text}) + "\n"
                                                     for q in chosen))
    write_text_atomic(out / "documents.jsonl", "".join(
        json.dumps({"id": d.document_id, "text": d.text, "title": d.title}) + "\n" for d in leads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--model", default=DEFAULT_GENERATOR)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--documents", type=int, default=150)
    parser.add_argument("--min-similarity", type=float, default=0.38, help="topical sample threshold")
    parser.add_argument("--top-k", type=int, default=2, help="candidate templates per document")
    parser.add_argument("--max-template-uses", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=10, help="random kept pairs to print")
    args = parser.parse_args()
    configure_logging()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    sample_inputs(out, args.queries, args.documents, args.min_similarity, args.seed)
    if not (out / "templates" / "shard-00000.parquet").is_file():
        subprocess.run([sys.executable, "-m", "fineinstructions.cli", "templatize", str(out / "queries.jsonl"),
                        "--id-field", "id", "--output", str(out / "templates"), "--model", args.model, "--quiet"],
                       check=True)
    config = PipelineConfig(
        queries=SourceConfig(kind="sharegpt"),
        templates=SourceConfig(path=str(out / "templates")),
        documents=SourceConfig(path=str(out / "documents.jsonl"), id_field="id", title_field="title",
                               limit=args.documents),
        generator=BackendConfig(model=args.model, n_threads=args.threads),
        match=MatchConfig(top_k=args.top_k, max_template_uses=args.max_template_uses),
        run=RunConfig(output_dir=str(out / "run"), seed=args.seed, shard_size=25, batch_size=6),
    )
    summary = Pipeline(config, show_progress=False).run()

    dataset: list[Pair] = read_records(out / "run" / "dataset", Pair)
    q = summary["quality"]
    uses = Counter(p.template_id for p in dataset)
    print(f"\n{summary['inputs']['documents']} documents, {summary['index']['templates']} templates, "
          f"top_k {args.top_k}, max uses {args.max_template_uses}, model {args.model}")
    for name, stage in summary["stages"].items():
        print(f"  {name:15s} {stage['rows_in']:5d} -> {stage['rows_out']:5d}  {stage['seconds']:8.1f} s  "
              f"dropped {stage['dropped']}")
    print(f"kept pairs: {len(dataset)} from {len(uses)} templates and {q['documents_with_pairs']} documents")
    print(f"kept answers with coverage >= 0.8: {q['kept_with_coverage_at_least_0_8']}  (goal >= 0.95)")
    print(f"kept answers with unresolved markers: {q['kept_with_unresolved_markers']}  (goal 0)")
    print(f"judge pass rate (score >= 4 of judged): {q['judge_pass_rate']}  (goal >= 0.5); "
          f"histogram {q['judge_score_histogram']}")
    print(f"largest share of kept pairs from one template: {q['max_template_share']}  (goal <= 0.01)")
    print(f"answer characters per generated token: {q['answer_chars_per_generated_token']}; "
          f"mean coverage kept {q['mean_excerpt_coverage_kept']}; duplicates removed {q['duplicate_pairs_removed']}")
    rng = random.Random(args.seed)
    for n, pair in enumerate(rng.sample(dataset, min(args.show, len(dataset))), 1):
        print(f"\n--- pair {n} (judge {pair.judge_score}, coverage {pair.excerpt_coverage:.2f}, "
              f"template {pair.template!r})")
        print(f"INSTRUCTION: {pair.instantiated_instruction}")
        print(f"ANSWER: {pair.answer}")
        print(f"MARKERS: {pair.answer_with_markers}")
        print(f"JUDGE: {pair.judge_feedback}")


if __name__ == "__main__":
    main()
