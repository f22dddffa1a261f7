"""Dataset parts of a target size, never half-written, loadable as one Hugging Face dataset."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.ranks.parts import PartWriter

SCHEMA = pa.schema([("i", pa.int64()), ("text", pa.string())])


def table(start: int, n: int) -> pa.Table:
    return pa.table({"i": list(range(start, start + n)),
                     "text": [f"row {i} " + "x" * 200 for i in range(start, start + n)]}, schema=SCHEMA)


def test_parts_roll_over_at_the_target_size_and_keep_every_row_in_order(tmp_path):
    with PartWriter(tmp_path / "rank-00000", SCHEMA, target_bytes=6_000) as writer:
        for start in range(0, 1000, 50):
            writer.write(table(start, 50))
    names = sorted(p.name for p in (tmp_path / "rank-00000").iterdir())
    assert names == [p["name"] for p in writer.parts] and len(names) > 2
    assert names[0] == "part-000000.parquet"
    rows = [i for name in names for i in pq.read_table(tmp_path / "rank-00000" / name).column("i").to_pylist()]
    assert rows == list(range(1000))


def test_a_failure_mid_part_leaves_only_closed_parts(tmp_path):
    with pytest.raises(RuntimeError), PartWriter(tmp_path, SCHEMA, target_bytes=10**9,
                                                 target_rows=100) as writer:
        writer.write(table(0, 100))  # closes part 0 (row target)
        writer.write(table(100, 10))
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000000.parquet"]


def test_the_dataset_folder_loads_as_one_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    for rank in range(2):
        with PartWriter(tmp_path / f"rank-{rank:05d}", SCHEMA, 10**9, target_rows=30) as writer:
            writer.write(table(rank * 100, 70))
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path), split="train",
                                   cache_dir=f"{tmp_path}-hf-cache")  # a fresh cache, outside the data folder
    assert sorted(loaded["i"]) == list(range(70)) + list(range(100, 170))
