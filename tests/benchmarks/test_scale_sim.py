"""The scale simulation at a small size, as the tests can afford it: 2 ranks under the local executor (child
processes) and under Ray give the same dataset row for row, in parts of the target size, and the stand-in
engine and hashing embedder keep pairs flowing through every stage."""

from __future__ import annotations

import pytest
from benchmarks.scale_sim import config, dataset_rows, write_bank, write_documents

from fineinstructions.pipeline import Pipeline


def test_the_small_simulation_gives_one_dataset_under_both_executors(tmp_path):
    pytest.importorskip("ray")
    documents, bank = write_documents(tmp_path, 600), write_bank(tmp_path, 400)
    local = config(tmp_path, documents, bank, tmp_path / "local", ranks=2, part_bytes=64 * 1024)
    summary = Pipeline(local, show_progress=False).run()
    assert summary["inputs"]["documents"] == 600 and summary["quality"]["pairs"] > 600
    assert summary["stages"]["match"]["rows_out"] == 6 * summary["stages"]["match"]["rows_in"]  # 6 candidates
    parts = sorted((tmp_path / "local" / "dataset").glob("rank-*/part-*.parquet"))
    last = {p.parent: p for p in parts}  # each rank's last part holds what was left
    assert len(parts) > 4 and all(0.8 <= p.stat().st_size / (64 * 1024) <= 1.2 for p in parts if p not in last.values())
    ray = config(tmp_path, documents, bank, tmp_path / "ray", ranks=2, part_bytes=64 * 1024, executor="ray")
    ray.run.cpus_per_worker = 0.5
    Pipeline(ray, show_progress=False).run()
    assert dataset_rows(tmp_path / "ray") == dataset_rows(tmp_path / "local")
