"""An engine outage, then recovery: what a rerun gets back, and what it pays for again.

    .venv/bin/python benchmarks/outage_recovery.py --queries 12 --documents 16

The real CLI runs a small job (packaged ShareGPT questions and Wikipedia leads, `benchmarks/jobs.py`)
against an OpenAI-compatible server on 127.0.0.1 that answers with the scripted engine (every judgement
passes) and returns 503 for the requests of the stages that are "down". For each scenario: a run during
the outage, then the same command after recovery, compared with the same job run into a fresh folder with
the server up. Printed per scenario: pairs and exit code of each run, the failures the first run left
(`unresolved_engine_failures`), requests the rerun sent per stage, and whether the final dataset equals
the reference row for row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scripted_backend import make  # noqa: E402
from tests.test_outage import ScriptedServer  # noqa: E402

from benchmarks.jobs import write_job  # noqa: E402
from fineinstructions.io.writers import read_records  # noqa: E402
from fineinstructions.records import Pair  # noqa: E402

SCENARIOS = {"instantiate down": {"instantiate"}, "judge down": {"judge"},
             "server down from the start": {"templatize", "instantiate", "judge"}}


def run_cli(config: Path, out: Path) -> int:
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "fineinstructions.cli", "run", "--config", str(config), "--out", str(out), "-q"]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def dataset(out: Path) -> list[tuple[str, str, str]]:
    folder = out / "dataset"
    pairs = read_records(folder, Pair) if folder.is_dir() else []
    return sorted((p.document_id, p.template_id, p.answer) for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--documents", type=int, default=16)
    args = parser.parse_args()
    os.environ["SCRIPTED_JUDGE"] = "pass"
    server = ScriptedServer(make().responder)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config_path = write_job(folder, args.queries, args.documents, None)
        config = yaml.safe_load(config_path.read_text())
        config["generator"] = {"kind": "openai", "base_url": server.url, "model": "scripted", "max_retries": 1,
                               "timeout_s": 5, "max_concurrency": 2}
        config_path.write_text(yaml.safe_dump(config))
        assert run_cli(config_path, folder / "reference") == 0
        reference = dataset(folder / "reference")
        print(f"reference: {len(reference)} pairs from {args.queries} questions and {args.documents} leads")
        for name, down in SCENARIOS.items():
            out = folder / name.replace(" ", "-")
            server.down = down
            first_exit = run_cli(config_path, out)
            summary = json.loads((out / "summary.json").read_text())
            during = len(dataset(out))
            server.down = set()
            server.reset_calls()
            second_exit = run_cli(config_path, out)
            sent = dict(server.calls)
            final = dataset(out)
            print(f"{name:27s}: during the outage {during:3d} pairs (exit {first_exit}, "
                  f"{summary['unresolved_engine_failures']} failed requests left); after recovery {len(final):3d} "
                  f"pairs (exit {second_exit}), requests sent again {sent}; equal to the reference: "
                  f"{final == reference}")
    server.httpd.shutdown()


if __name__ == "__main__":
    main()
