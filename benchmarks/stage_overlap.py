"""A rank's stages one after the other vs overlapped on consecutive windows (`run.overlap_stages`), side by side.

    .venv/bin/python benchmarks/stage_overlap.py --documents 48 --delay 0.05

Instantiate and judge each get an engine of their own (the scripted engine, which waits `--delay` seconds per
request as a busy GPU engine would, without using the CPU), so what is measured is how much of the judge's,
match's and filter's time the overlap hides behind instantiate's: the rank's wall time (its marker's
`seconds`; the whole run also pays imports and the query phase, once per process). No GPU is needed, and
none was available: on a GPU the two engines' waits are the GPU's work. The output must be identical row for row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.jobs import write_job  # noqa: E402
from fineinstructions.config import PipelineConfig  # noqa: E402
from fineinstructions.io.writers import read_records  # noqa: E402
from fineinstructions.pipeline import Pipeline  # noqa: E402
from fineinstructions.ranks.steps import GenerateStep, RunJob  # noqa: E402
from fineinstructions.records import Pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per request of each engine")
    parser.add_argument("--shard-size", type=int, default=4)
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ["SCRIPTED_CALL_DELAY"] = str(args.delay)
    os.environ["SCRIPTED_JUDGE"] = "pass"
    folder = Path(tempfile.mkdtemp(prefix="overlap-"))
    base = PipelineConfig.from_yaml(write_job(folder, args.queries, args.documents, None,
                                              run={"shard_size": args.shard_size}))
    base.judge.backend = base.generator.model_copy(update={"timeout_s": 60.0})  # an engine of its own
    results = {}
    for overlap in (False, True):
        cfg = base.model_copy(deep=True)
        cfg.run.output_dir = str(folder / f"overlap-{overlap}")
        cfg.run.overlap_stages = overlap
        start = time.perf_counter()
        summary = Pipeline(cfg, show_progress=False).run()
        seconds = time.perf_counter() - start
        pairs = read_records(Path(cfg.run.output_dir) / "dataset", Pair)
        rows = sorted((p.document_id, p.template_id, p.instantiated_instruction, p.answer, p.judge_score)
                      for p in pairs)
        stages = {k: round(v["seconds"], 1) for k, v in summary["stages"].items()
                  if k in ("match", "instantiate", "judge", "filter")}
        rank = GenerateStep(RunJob.from_folder(cfg.run.output_dir)).marker(0) or {}
        results[overlap] = (rank["seconds"], rows)
        print(f"overlap {str(overlap):<5}: the rank's documents in {rank['seconds']:5.1f} s (whole run "
              f"{seconds:.1f} s, {len(rows)} pairs); stage seconds {stages}", flush=True)
    (plain, plain_rows), (fast, fast_rows) = results[False], results[True]
    print(f"\nthe rank's wall time, one after the other / overlapped: {plain / fast:.2f}x; identical dataset row "
          f"for row: {plain_rows == fast_rows}")


if __name__ == "__main__":
    main()
