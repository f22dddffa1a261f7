"""Exactly-once resume: a run killed with SIGKILL anywhere resumes to the uninterrupted run's rows,
without paying twice for a finished model call."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fineinstructions.backends.cache import RequestCache
from fineinstructions.config import PipelineConfig
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.io.writers import read_records
from fineinstructions.records import Pair
from tests.test_pipeline import config_for, run_scripted

ROOT = Path(__file__).resolve().parents[1]


def driver(cfg: PipelineConfig, call_log: Path, *args: str) -> subprocess.Popen:
    config = call_log.with_suffix(".json")
    config.write_text(cfg.model_dump_json())
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.resume_driver", str(config), str(call_log), *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def pairs_of(cfg: PipelineConfig) -> list[tuple[str, str, str, str]]:
    pairs = read_records(Path(cfg.run.output_dir) / "dataset", Pair)
    return sorted((p.document_id, p.template_id, p.instantiated_instruction, p.answer) for p in pairs)  # type: ignore[attr-defined]


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.is_file() else 0


def test_sigkill_at_model_calls_and_at_random_instants_resumes_exactly_once(tmp_path):
    reference = config_for(tmp_path, out="reference")
    _, engine = run_scripted(reference)
    expected = pairs_of(reference)
    assert expected

    cfg = config_for(tmp_path, out="killed")
    log = tmp_path / "calls.log"
    kills = 0
    for kill_at in (2, 5, 4):  # SIGKILL inside the engine at the n-th call of each resumed run
        proc = driver(cfg, log, "--kill-at-call", str(kill_at))
        assert proc.wait(120) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        kills += 1
    rng = random.Random(0)
    while True:  # SIGKILL at a random instant once the engine is busy: inside writes, renames, anywhere
        before = calls(log)
        proc = driver(cfg, log, "--call-delay", "0.02")
        while proc.poll() is None and calls(log) == before:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.1))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        kills += 1
        if kills >= 5:
            break
    assert kills >= 4
    if proc.returncode != 0:
        final = driver(cfg, log)
        assert final.wait(180) == 0, final.stderr.read() if final.stderr else ""

    got = pairs_of(cfg)
    assert got == expected  # same rows, none lost
    assert len({(d, t) for d, t, _, _ in got}) == len(got)  # no duplicates
    # Finished calls are cached as each batch returns: at most the batch in flight is paid again per kill.
    assert calls(log) <= len(engine.calls) + kills * (cfg.run.batch_size - 1)
    reference_cache = RequestCache(RunFolder(reference.run.output_dir).request_cache)
    assert len(RequestCache(RunFolder(cfg.run.output_dir).request_cache)) == len(reference_cache)
    assert not [p for p in Path(cfg.run.output_dir).rglob(".*.tmp-*")]  # stale temporaries swept


def test_lost_work_folder_is_rebuilt_from_the_request_cache_without_model_calls(tmp_path):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    expected = pairs_of(cfg)
    for stage_dir in (Path(cfg.run.output_dir) / "work").iterdir():
        for shard in stage_dir.glob("shard-*.parquet"):
            shard.unlink()  # every completion marker gone: every shard recomputes
    for part in (Path(cfg.run.output_dir) / "dataset").glob("*.parquet"):
        part.unlink()

    def must_not_be_called(conversation):
        raise AssertionError("a cached request reached the engine")

    run_scripted(cfg, must_not_be_called)
    assert pairs_of(cfg) == expected


def test_forced_restart_with_a_changed_judge_threshold_reuses_every_model_call(tmp_path):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    changed = cfg.model_copy(deep=True)
    changed.judge.min_score = 5  # a filter setting: no request changes

    def must_not_be_called(conversation):
        raise AssertionError("a cached request reached the engine")

    summary, _ = run_scripted(changed, must_not_be_called, force=True)
    assert summary["stages"]["instantiate"]["rows_in"] > 0


@pytest.mark.parametrize("field,value", [("executor", "ray"), ("workers", 4), ("request_cache", False),
                                         ("shards_in_flight", 3)])
def test_execution_settings_do_not_change_the_fingerprint(tmp_path, field, value):
    cfg = config_for(tmp_path)
    other = cfg.model_copy(deep=True)
    setattr(other.run, field, value)
    assert other.fingerprint() == cfg.fingerprint()


def test_window_size_does_not_change_the_output(tmp_path):
    one = config_for(tmp_path, out="one")
    one.run.shards_in_flight = 1
    one.match.max_template_uses = 1
    many = config_for(tmp_path, out="many")
    many.run.shards_in_flight = 5
    many.match.max_template_uses = 1
    run_scripted(one)
    run_scripted(many)
    assert pairs_of(one) == pairs_of(many)
