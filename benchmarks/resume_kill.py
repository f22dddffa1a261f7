"""SIGKILL the real CLI at random instants, resume each time, and compare with an uninterrupted run.

    .venv/bin/python benchmarks/resume_kill.py --trials 20                  # scripted engine, 50 ms/call
    .venv/bin/python benchmarks/resume_kill.py --trials 20 --model smollm2-135m-instruct   # the real 135M model

Each trial starts a fresh run folder and SIGKILLs the CLI at a uniformly random instant of the work (after
start-up), so kills hit model calls, Parquet writes, renames, the index build and the filter alike; then it
resumes with the same command to the end. Printed: rows equal to the reference, duplicates, lost rows, model calls paid
twice (scripted engine: every finished call is logged by the engine itself), and time vs the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.jobs import write_job  # noqa: E402
from fineinstructions.io.writers import read_records  # noqa: E402
from fineinstructions.records import Pair  # noqa: E402


def launch(config: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fineinstructions.cli", "run", "--config", str(config), "--out", str(out), "-q"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(out: Path) -> list[tuple[str, str, str, str]]:
    pairs = read_records(out / "dataset", Pair) if (out / "dataset").exists() else []
    return sorted((p.document_id, p.template_id, p.instantiated_instruction, p.answer) for p in pairs)


def stage_rows(out: Path) -> dict[str, list[str]]:
    """Every row each stage committed, outputs and rejects, in a comparable form."""
    found: dict[str, list[str]] = {}
    for file in sorted((out / "work").glob("**/shard-*.parquet")):
        key = str(file.parent.relative_to(out / "work"))
        rows = pq.read_table(file).to_pylist()
        found.setdefault(key, []).extend(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return {key: sorted(rows) for key, rows in found.items()}


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="fresh runs, each killed and resumed")
    parser.add_argument("--kills-per-trial", type=int, default=1)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--model", default=None, help="a registry model; default: the scripted engine")
    parser.add_argument("--call-delay", type=float, default=0.05, help="scripted engine: seconds per call")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="resume-kill-"))
    config = write_job(folder, args.queries, args.documents, args.model)
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "SCRIPTED_CALL_DELAY": str(args.call_delay),
                        "SCRIPTED_JUDGE": "pass"}

    reference_log = folder / "reference.calls"
    start = time.perf_counter()
    proc = launch(config, folder / "reference", env | {"SCRIPTED_CALL_LOG": str(reference_log)})
    while not (folder / "reference" / "fingerprint").is_file() and proc.poll() is None:
        time.sleep(0.05)
    started = time.perf_counter()
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    reference_s = time.perf_counter() - start
    work_s = time.perf_counter() - started  # the part after start-up, where kills may land
    expected = rows(folder / "reference")
    expected_stages = stage_rows(folder / "reference")
    total_shards = len(list((folder / "reference" / "work").glob("*/shard-*.parquet")))
    print(f"reference: {len(expected)} pairs, {count_lines(reference_log)} engine calls, {reference_s:.1f} s "
          f"({work_s:.1f} s after start-up)")

    kills, mismatches, stage_mismatches, duplicates, lost, repaid, total_s = 0, 0, 0, 0, 0, 0, 0.0
    landed: dict[str, int] = {}
    for trial in range(args.trials):
        out, log = folder / f"trial-{trial:02d}", folder / f"trial-{trial:02d}.calls"
        begin = time.perf_counter()
        for _ in range(args.kills_per_trial):  # each kill at a random instant of the work still to do
            proc = launch(config, out, env | {"SCRIPTED_CALL_LOG": str(log)})
            while not (out / "fingerprint").is_file() and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, work_s))
            if proc.poll() is not None:
                break
            shards = list((out / "work").glob("*/shard-*.parquet"))
            newest = max(shards, key=lambda f: f.stat().st_mtime_ns) if shards else None
            where = f"after a {newest.parent.name} commit" if newest else "before the first commit"
            where += f", {'<' if len(shards) < total_shards / 2 else '>='} half of the shards done"
            landed[where] = landed.get(where, 0) + 1
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = launch(config, out, env | {"SCRIPTED_CALL_LOG": str(log)})
        if proc.wait() != 0:
            raise SystemExit(f"the resumed run failed:\n{proc.stderr.read() if proc.stderr else ''}")
        total_s += time.perf_counter() - begin
        got = rows(out)
        keys = [(d, t) for d, t, _, _ in got]
        mismatches += got != expected
        stage_mismatches += stage_rows(out) != expected_stages
        duplicates += len(keys) - len(set(keys))
        lost += len(set(expected) - set(got))
        repaid += count_lines(log) - count_lines(reference_log)
        leftovers = list(out.rglob(".*.tmp-*"))
        assert not leftovers, leftovers
    print(f"{args.trials} trials, {kills} SIGKILLs (where they landed: "
          f"{dict(sorted(landed.items()))})")
    print(f"trials whose resumed output differs from the reference: {mismatches}; duplicate rows: {duplicates}; "
          f"lost rows: {lost}")
    print(f"trials where any stage's committed rows (outputs and rejects) differ: {stage_mismatches} "
          f"({sum(map(len, expected_stages.values()))} rows in {len(expected_stages)} stage folders)")
    if not args.model:
        print(f"engine calls paid twice: {repaid} in all = {repaid / max(kills, 1):.2f} per kill "
              f"(at most the batch in flight: 1 call at batch size 2)")
    print(f"mean wall time of a killed-and-resumed trial: {total_s / args.trials:.1f} s = "
          f"{total_s / args.trials / reference_s:.2f}x the uninterrupted run (each restart pays start-up again)")


if __name__ == "__main__":
    main()
