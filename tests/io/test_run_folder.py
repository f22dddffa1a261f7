"""The run folder is owned: only empty or own folders are claimed, one run at a time holds it, it is never
read as its own input, and everything derived from a config goes when `--force` replaces that config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fineinstructions.cli import app
from fineinstructions.io.atomic import atomic_dir, remove_stale_temporaries
from fineinstructions.io.readers import ReadStats, read_rows
from fineinstructions.io.run_folder import MARKER, RunFolderError, RunLock, is_run_folder
from tests.test_pipeline import config_for, dataset_rows, run_scripted

DEAD_PID = 999_999_999  # above any pid_max: never a live process


def test_a_foreign_non_empty_folder_is_refused_and_left_untouched(tmp_path):
    cfg = config_for(tmp_path, out="mine")
    mine = tmp_path / "mine"
    (mine / "deep" / "er").mkdir(parents=True)
    files = {mine / "config.yaml": "my own config\n", mine / "deep" / "er" / ".notes.tmp-1": "keep me",
             mine / "deep" / ".cache.tmp-abc": "keep me too"}
    for path, text in files.items():
        path.write_text(text)
    with pytest.raises(RunFolderError, match="not empty and is not a fineinstructions run folder"):
        run_scripted(cfg)
    assert all(path.read_text() == text for path, text in files.items())
    assert not (mine / MARKER).exists() and not (mine / "fingerprint").exists()


@pytest.mark.parametrize("out", ["", "."])
def test_the_current_directory_is_never_a_run_folder(tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("x")
    cfg = config_for(tmp_path)
    cfg.run.output_dir = out
    with pytest.raises(RunFolderError, match="not the current directory"):
        run_scripted(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents.jsonl", "precious.txt", "queries.jsonl"]


def test_an_empty_folder_and_an_older_run_folder_are_claimed(tmp_path):
    cfg = config_for(tmp_path)
    (tmp_path / "run").mkdir()
    run_scripted(cfg)
    assert is_run_folder(tmp_path / "run") and (tmp_path / "run" / MARKER).is_file()
    (tmp_path / "run" / MARKER).unlink()  # a run folder made before the marker existed
    summary, backend = run_scripted(cfg)
    assert not backend.calls and (tmp_path / "run" / MARKER).is_file()


def test_the_sweep_removes_only_its_own_temporaries_where_it_writes_them(tmp_path):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    root = tmp_path / "run"
    stale = [root / "work" / "instantiate" / f".shard-00000.parquet.tmp-{DEAD_PID}",
             root / "work" / "judge" / "stats" / f".shard-00000.json.tmp-{DEAD_PID}",
             root / f".index.tmp-{DEAD_PID}-x1y2"]
    kept = [root / "work" / "instantiate" / f".shard-00000.parquet.tmp-{os.getpid()}",  # a live process's
            root / "notes" / f".draft.tmp-{DEAD_PID}",  # not a folder the run writes into
            root / "work" / "instantiate" / ".my file.tmp-whatever!"]  # not a name the project makes
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith("x1y2"):
            path.mkdir()
        else:
            path.write_text("partial")
    run_scripted(cfg)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_a_killed_atomic_dir_leaves_no_orphan_for_long(tmp_path):
    orphan = tmp_path / f".staged.tmp-{DEAD_PID}-ab12cd"
    orphan.mkdir()
    (orphan / "README.md").write_text("half")
    live = tmp_path / f".staged.tmp-{os.getpid()}-zz99"  # another writer, still alive
    live.mkdir()
    with atomic_dir(tmp_path / "staged") as tmp:
        (tmp / "README.md").write_text("done")
    assert (tmp_path / "staged" / "README.md").read_text() == "done"
    assert not orphan.exists() and live.exists()
    assert remove_stale_temporaries(tmp_path, [tmp_path], name="staged") == 0


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from fineinstructions.io.run_folder import RunLock; lock = RunLock(Path(sys.argv[1])); lock.acquire(); "
         "print('held', flush=True); time.sleep(120)", str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = config_for(tmp_path)
        other.judge.min_score = 5  # another config: it must not even get to the fingerprint check
        with pytest.raises(RunFolderError, match=rf"in use by pid {holder.pid} on "):
            run_scripted(other, force=True)
        with pytest.raises(RunFolderError, match="in use"):
            run_scripted(cfg)
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder releases the lock with its process
        holder.wait()
    summary, _ = run_scripted(cfg)
    assert summary["stages"]


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_an_output_folder_inside_the_inputs_is_refused_and_nested_run_folders_are_not_input(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    cfg = config_for(tmp_path)
    (tmp_path / "documents.jsonl").rename(docs / "documents.jsonl")
    cfg.documents.path = str(docs)
    cfg.run.output_dir = str(docs / "run")
    with pytest.raises(RunFolderError, match="inside the input folder"):
        run_scripted(cfg)
    assert not (docs / "run").exists()

    cfg.run.output_dir = str(tmp_path / "elsewhere")
    run_scripted(cfg)
    (tmp_path / "elsewhere").rename(docs / "old-run")  # a run folder that ends up among the inputs
    stats = ReadStats()
    rows = list(read_rows(str(docs), stats=stats))
    assert len(rows) == 4 and stats.ignored_files["run_folder"] == 1


def test_force_with_another_embedder_clears_everything_derived(tmp_path, embedder):
    cfg = config_for(tmp_path)
    first, _ = run_scripted(cfg)
    old_stamp = (tmp_path / "run" / "index.sha").read_text()
    (tmp_path / "run" / "report").mkdir()
    (tmp_path / "run" / "report" / "report.html").write_text("old report")
    copy = tmp_path / "minilm-copy"
    embedder.model.save(str(copy))
    changed = config_for(tmp_path)
    changed.match.embedder = str(copy)
    summary, _ = run_scripted(changed, force=True)
    assert (tmp_path / "run" / "index.sha").read_text() != old_stamp
    assert summary["models"]["embedder"] == str(copy) and not (tmp_path / "run" / "report").exists()
    assert dataset_rows(changed) == dataset_rows(cfg)  # the same model under another name: the same pairs


def test_a_forced_run_that_fails_leaves_no_summary_of_the_old_run(tmp_path, monkeypatch):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    changed = config_for(tmp_path)
    changed.judge.min_score = 5

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the filter")

    monkeypatch.setattr("fineinstructions.stages.filter.FilterStage.process", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run_scripted(changed, force=True)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_cli_errors_for_a_file_as_output_and_for_inputs_without_a_usable_row(tmp_path):
    cfg = config_for(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "a-file"), "-q"])
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output

    (tmp_path / "documents.jsonl").write_text("{not json\n" * 3)
    cfg.generator.kind, cfg.generator.model = "custom", "tests.scripted_backend:make"
    config.write_text(cfg.to_yaml())
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "empty-run"), "-q"])
    assert result.exit_code == 2 and "no usable documents" in result.output, result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_a_one_line_error(tmp_path):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    os.chmod(tmp_path / "run", 0o555)
    try:
        with pytest.raises(RunFolderError, match="cannot write"):
            run_scripted(cfg)
    finally:
        os.chmod(tmp_path / "run", 0o755)


def test_a_run_that_outlives_its_lock_holder_is_not_blocked(tmp_path):
    """A run killed mid-way leaves its lock file, but not its lock: the next run proceeds."""
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    (tmp_path / "run" / ".lock").write_text(f"pid {DEAD_PID} on some-host since long ago\n")
    start = time.perf_counter()
    summary, _ = run_scripted(cfg)
    assert summary["stages"] and time.perf_counter() - start < 30


def test_a_folder_records_its_kind_of_run_and_another_kind_is_refused(tmp_path):
    import json

    from fineinstructions.io.run_folder import RunFolder, marker_kind

    training = tmp_path / "train"
    with RunFolder(training, kind="training") as folder:
        folder.claim("fp-train")
    assert marker_kind(training) == "training"
    with pytest.raises(RunFolderError, match="holds a training run, not a pipeline one"):
        run_scripted(config_for(tmp_path, out="train"))
    with RunFolder(training, kind="training") as folder:  # its own kind claims it again
        assert not folder.claim("fp-train")
    older = tmp_path / "older"
    older.mkdir()
    (older / MARKER).write_text(json.dumps({"kind": "fineinstructions run folder", "version": 1}))
    assert marker_kind(older) == "pipeline"  # markers written before kinds were recorded: pipeline runs
