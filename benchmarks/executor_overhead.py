"""The same job on the local executor and on the Ray Data executor (a local Ray cluster): time and output.

    .venv/bin/python benchmarks/executor_overhead.py                                 # the real 135M model
    .venv/bin/python benchmarks/executor_overhead.py --model scripted --documents 32   # 50 ms/call, keeps pairs

On one machine Ray can only add cost (cluster start, actors that load their own engine per stage and
window, shipping shards as rows); the figure is that cost. The output must be identical row for row.
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
from fineinstructions.records import Pair  # noqa: E402


def run(config: PipelineConfig) -> tuple[float, dict, list[tuple]]:
    start = time.perf_counter()
    summary = Pipeline(config, show_progress=False).run()
    seconds = time.perf_counter() - start
    pairs = read_records(Path(config.run.output_dir) / "dataset", Pair)
    rows = sorted((p.document_id, p.template_id, p.instantiated_instruction, p.answer) for p in pairs)
    return seconds, summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a registry model, or 'scripted'")
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="Ray actors per model stage")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = parser.parse_args()
    os.chdir(ROOT)  # the scripted engine is importable from here, in the driver and in the actors
    folder = Path(tempfile.mkdtemp(prefix="executors-"))
    model = None if args.model == "scripted" else args.model
    if model is None:  # the scripted engine: 50 ms a call, and a judge that passes every pair
        os.environ.setdefault("SCRIPTED_CALL_DELAY", "0.05")
        os.environ["SCRIPTED_JUDGE"] = "pass"
    base = PipelineConfig.from_yaml(write_job(folder, args.queries, args.documents, model))
    local = base.model_copy(deep=True)
    local.run.output_dir = str(folder / "local")
    distributed = base.model_copy(deep=True)
    distributed.run.output_dir = str(folder / "ray")
    distributed.run.executor = "ray"
    distributed.run.workers = args.workers
    distributed.run.cpus_per_worker = args.cpus_per_worker

    local_s, local_summary, local_rows = run(local)
    ray_s, ray_summary, ray_rows = run(distributed)
    print(f"job: {args.queries} queries, {args.documents} documents, model {args.model}, "
          f"Ray workers {args.workers} x {args.cpus_per_worker} CPU")
    print(f"{'stage':<14}{'local s':>10}{'ray s':>10}{'local tok/s':>13}{'ray tok/s':>11}")
    for stage, stats in local_summary["stages"].items():
        other = ray_summary["stages"][stage]
        print(f"{stage:<14}{stats['seconds']:>10.1f}{other['seconds']:>10.1f}"
              f"{stats['completion_tokens_per_s']:>13.1f}{other['completion_tokens_per_s']:>11.1f}")
    print(f"wall: local {local_s:.1f} s, ray {ray_s:.1f} s -> ray / local = {ray_s / local_s:.2f}x")
    print(f"identical output: {ray_rows == local_rows} ({len(ray_rows)} vs {len(local_rows)} pairs)")


if __name__ == "__main__":
    main()
