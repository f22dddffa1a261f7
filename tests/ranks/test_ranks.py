"""The document phase in ranks: the same dataset from 1 rank in this process and from several ranks in local
child processes, a rank killed at a random instant resumes exactly once, and Slurm array tasks run the same
task code (through a stand-in `sbatch` that runs the array here: no Slurm cluster on this machine)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fineinstructions.config import BackendConfig, PipelineConfig, RunConfig, SourceConfig
from fineinstructions.executors.tasks import TaskFailed
from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.pipeline import Pipeline
from fineinstructions.ranks.steps import GenerateStep, RunJob, overlaps_stages, template_budget
from fineinstructions.records import Template
from tests.test_pipeline import QUERIES

SCRIPTED = BackendConfig(kind="custom", model="tests.scripted_backend:make")


@pytest.fixture(autouse=True)
def judge_passes(monkeypatch):
    monkeypatch.setenv("SCRIPTED_JUDGE", "pass")  # inherited by the rank processes


def ranked_config(tmp_path: Path, out: str, ranks: int, workers: int = 1, documents: int = 24) -> PipelineConfig:
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"text": q, "id": f"q{i}"}) + "\n" for i, q in enumerate(QUERIES)))
    docs = tmp_path / "documents.jsonl"
    leads = [d for d in wikipedia_documents() if 400 <= len(d.text) <= 1200][:documents]
    docs.write_text("".join(json.dumps({"id": d.document_id, "text": d.text, "title": d.title}) + "\n" for d in leads))
    cfg = PipelineConfig(queries=SourceConfig(path=str(queries)), documents=SourceConfig(path=str(docs)),
                         generator=SCRIPTED,
                         run=RunConfig(output_dir=str(tmp_path / out), shard_size=3, batch_size=2, ranks=ranks,
                                       workers=workers, part_rows=7))
    cfg.match.top_k = 2
    cfg.match.max_template_uses = None  # a cap is split into per-rank budgets: the datasets would differ
    return cfg


def dataset(cfg: PipelineConfig) -> list[tuple[str, str, str]]:
    root = Path(cfg.run.output_dir) / "dataset"
    return sorted((r["document_id"], r["template_id"], r["answer"]) for part in root.glob("rank-*/part-*.parquet")
                  for r in pq.read_table(part, columns=["document_id", "template_id", "answer"]).to_pylist())


def test_ranks_in_child_processes_give_the_one_rank_dataset(tmp_path):
    one = ranked_config(tmp_path, "one", ranks=1)
    summary_one = Pipeline(one, show_progress=False).run()
    three = ranked_config(tmp_path, "three", ranks=3, workers=3)
    summary = Pipeline(three, show_progress=False).run()
    assert dataset(three) == dataset(one) and dataset(one)
    assert summary["inputs"]["documents"] == summary_one["inputs"]["documents"] == 24
    assert summary["quality"]["pairs"] == summary_one["quality"]["pairs"] == len(dataset(one))
    for stage in ("match", "instantiate", "judge", "filter"):
        assert summary["stages"][stage]["rows_out"] == summary_one["stages"][stage]["rows_out"]
    root = tmp_path / "three"
    assert sorted(p.name for p in (root / "dataset").iterdir()) == ["rank-00000", "rank-00001", "rank-00002"]
    assert all(pq.read_metadata(p).num_rows <= 7 for p in (root / "dataset").glob("rank-*/part-*.parquet"))
    assert (root / "cache" / "rank-00002.sqlite").is_file() and (root / "logs" / "generate-rank-00001.log").is_file()


def test_a_rank_killed_at_a_random_instant_resumes_without_lost_or_repeated_rows(tmp_path, monkeypatch):
    reference = ranked_config(tmp_path, "reference", ranks=4, workers=1, documents=48)
    Pipeline(reference, show_progress=False).run()
    monkeypatch.setenv("SCRIPTED_CALL_DELAY", "0.1")  # slow calls: each rank takes seconds over its 4 shards
    cfg = ranked_config(tmp_path, "killed", ranks=4, workers=4, documents=48)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            Pipeline(cfg, show_progress=False).run()
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            failure.append(err)

    driver = threading.Thread(target=run)
    driver.start()
    rng = random.Random(os.getpid())
    rank = rng.randrange(4)
    first_shard = tmp_path / "killed" / "work" / "match" / f"rank-{rank:05d}" / "shard-000000.parquet"
    victim = None
    while driver.is_alive() and victim is None:
        children = [p for p in multiprocessing.active_children() if p.name == f"generate-{rank}"]
        if children and first_shard.is_file():  # the rank is inside its shards: kill it somewhere in them
            time.sleep(rng.uniform(0.0, 1.5))
            victim = children[0]
            os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.02)
    driver.join()
    assert victim is not None, "the run ended before the rank could be killed"
    assert failure and isinstance(failure[0], TaskFailed) and "killed by signal 9" in str(failure[0])
    monkeypatch.setenv("SCRIPTED_CALL_DELAY", "0")
    Pipeline(cfg, show_progress=False).run()
    assert dataset(cfg) == dataset(reference)
    assert not list((tmp_path / "killed").rglob(".*.tmp-*"))


def test_slurm_array_tasks_run_the_same_task_code(tmp_path, monkeypatch):
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"""#!{sys.executable}
# A stand-in for Slurm's sbatch: runs each array task of the script here, one after another.
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
spec = re.search(r"--array=(\\S+)", text).group(1)
ids = [i for span in spec.split(",") for i in (range(int(span.split("-")[0]), int(span.split("-")[-1]) + 1))]
code = 0
for task in ids:
    code |= subprocess.run(["bash", script], env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(task))).returncode
print("4242")
sys.exit(code)
""")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FINEINSTRUCTIONS_SBATCH", str(sbatch))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    local = ranked_config(tmp_path, "local", ranks=2, documents=8)
    Pipeline(local, show_progress=False).run()
    cfg = ranked_config(tmp_path, "slurm", ranks=2, documents=8)
    cfg.run.executor = "slurm"
    cfg.run.slurm_options = ["--partition=debug"]
    Pipeline(cfg, show_progress=False).run()
    assert dataset(cfg) == dataset(local) and dataset(local)
    script = (tmp_path / "slurm" / "slurm" / "generate.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --partition=debug" in script
    assert "-m fineinstructions.cli task" in script
    assert GenerateStep(RunJob.from_folder(tmp_path / "slurm")).pending() == []


def test_template_budgets_split_the_cap_and_sum_to_it():
    for cap in (1, 5, 12):
        for ranks in (1, 3, 8):
            budgets = [template_budget(cap, r, ranks) for r in range(ranks)]
            assert sum(budgets) == cap and max(budgets) - min(budgets) <= 1


def test_a_deduplicated_bank_streams_into_the_index_and_is_reused(tmp_path):
    cfg = ranked_config(tmp_path, "bank", ranks=2, documents=8)
    bank = tmp_path / "bank.parquet"
    leads = [d for d in wikipedia_documents() if 400 <= len(d.text) <= 1200][:40]
    pq.write_table(Template.to_table([
        Template(template_id=f"ft-{i}", template=f"What is known about <fi>{d.title.split()[0]} or similar</fi>?",
                 compatible_document_description=f"An encyclopedia article about {d.title}.")
        for i, d in enumerate(leads)]), bank)
    cfg.templates = SourceConfig(path=str(bank))
    cfg.queries = None
    cfg.match.deduplicate_bank = False
    cfg.match.embedder = "hashing-sim"
    summary = Pipeline(cfg, show_progress=False).run()
    assert summary["index"]["templates"] == 40 and "template_dedup" not in summary["stages"]
    assert dataset(cfg)
    stamp = (tmp_path / "bank" / "index.sha").read_text()
    index_file = tmp_path / "bank" / "index" / "templates.faiss"
    built = index_file.stat().st_mtime_ns
    Pipeline(cfg, show_progress=False).run()  # a rerun reads the bank again, finds the same digest, keeps the index
    assert (tmp_path / "bank" / "index.sha").read_text() == stamp and index_file.stat().st_mtime_ns == built


def committed(cfg: PipelineConfig, stage: str) -> list[dict]:
    """Every row a stage committed in every rank, in rank and shard order."""
    folder = RunJob.from_folder(cfg.run.output_dir).folder
    return [row for rank in range(cfg.run.ranks)
            for path in sorted(folder.stage_dir(stage, rank).glob("shard-*.parquet"))
            for row in pq.read_table(path).to_pylist()]


def test_overlapped_stages_commit_what_one_after_the_other_commits(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRIPTED_CALL_DELAY", "0.005")
    runs = {}
    for overlap in (False, True):
        cfg = ranked_config(tmp_path, f"overlap-{overlap}", ranks=2, documents=16)
        cfg.judge.backend = SCRIPTED.model_copy(update={"timeout_s": 30.0})  # an engine of its own
        cfg.run.overlap_stages = overlap
        assert overlaps_stages(cfg) is overlap
        Pipeline(cfg, show_progress=False).run()
        runs[overlap] = cfg
    assert dataset(runs[True]) == dataset(runs[False]) and dataset(runs[False])
    for stage in ("match", "instantiate", "judge", "filter"):
        assert committed(runs[True], stage) == committed(runs[False], stage)
    for overlap, cfg in runs.items():
        job = RunJob.from_folder(cfg.run.output_dir)
        assert [GenerateStep(job).marker(rank)["overlapped"] for rank in range(2)] == [overlap, overlap]


def test_stages_overlap_only_where_two_engines_can_be_fed_at_once(tmp_path):
    cfg = ranked_config(tmp_path, "decide", ranks=1)
    cfg.run.overlap_stages = True
    assert not overlaps_stages(cfg)  # one engine serves instantiate and judge: its calls cannot overlap
    cfg.judge.backend = BackendConfig(kind="llamacpp", model="smollm2-135m-instruct")
    cfg.generator = BackendConfig(kind="llamacpp", model="qwen2.5-coder-0.5b-instruct")
    cfg.run.overlap_stages = None
    assert not overlaps_stages(cfg)  # two llama.cpp engines on one CPU would only share its cores
    cfg.generator = BackendConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="a")
    cfg.judge.backend = BackendConfig(kind="openai", base_url="http://127.0.0.1:2/v1", model="b")
    assert overlaps_stages(cfg)  # two servers batch requests in flight
    cfg.run.overlap_stages = False
    assert not overlaps_stages(cfg)


@pytest.mark.model
def test_a_real_judge_engine_fed_from_its_own_thread_gives_the_same_scores(tmp_path, monkeypatch, test_gguf):
    """llama.cpp judges in its own thread while the next window is instantiated: the same greedy scores."""
    monkeypatch.setenv("SCRIPTED_CALL_DELAY", "0.01")
    runs = {}
    for overlap in (False, True):
        cfg = ranked_config(tmp_path, f"real-{overlap}", ranks=1, documents=8)
        cfg.judge.backend = BackendConfig(kind="llamacpp", model=str(test_gguf), n_ctx=4096)
        cfg.judge.max_tokens = 40
        cfg.run.overlap_stages = overlap
        summary = Pipeline(cfg, show_progress=False).run()
        assert summary["stages"]["judge"]["requests"] >= 4
        runs[overlap] = cfg
    assert committed(runs[True], "judge") == committed(runs[False], "judge")
    assert dataset(runs[True]) == dataset(runs[False])
