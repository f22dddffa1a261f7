"""Held-out instructions for the judged head-to-head: real ShareGPT questions the run never saw.

AlpacaEval-style: real user instructions, no reference answers. They are self-contained
information-seeking ShareGPT questions (the filter the run's queries passed), sampled with another seed, minus
every query the pairs run read, so no model was trained on a pair made from them.

    python experiments/tiny/heldout_questions.py --run runs/experiment-tiny/pairs \
        --n 80 --out runs/experiment-tiny/heldout_questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_queries(run_dir: Path) -> set[str]:
    """Normalised texts of every query the run read (its query-filter input shard)."""
    import pyarrow.parquet as pq

    seen: set[str] = set()
    for shard in sorted((run_dir / "work" / "query_filter").glob("shard-*.parquet")):
        seen.update(" ".join(t.lower().split()) for t in pq.read_table(shard, columns=["text"])["text"].to_pylist())
    if not seen:
        raise SystemExit(f"{run_dir} holds no query-filter shard: run the pairs step first")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the pairs run folder")
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-chars", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from fineinstructions.io.atomic import write_text_atomic
    from fineinstructions.io.sources import demo_queries

    used = run_queries(args.run)
    pool = demo_queries(10**9, seed=args.seed)
    chosen = []
    for query in pool:
        key = " ".join(query.text.lower().split())
        if key not in used and len(query.text) <= args.max_chars:
            used.add(key)
            chosen.append({"instruction": query.text.strip(), "query_id": query.query_id})
        if len(chosen) == args.n:
            break
    write_text_atomic(args.out, "".join(json.dumps(row) + "\n" for row in chosen))
    print(f"{len(chosen)} held-out questions -> {args.out}")


if __name__ == "__main__":
    main()
