"""`read_rows(..., part=(rank, ranks))`: the ranks' rows are every row once, in a fixed order, with their counts."""

from __future__ import annotations

import gzip
import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.io.readers import InputError, ReadStats, read_rows

RANKS = (1, 2, 3, 5)


def rows(prefix: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows with unique ids and texts of varied length (0 to a few hundred characters)."""
    rng = random.Random(seed)
    return [{"id": f"{prefix}{i}", "text": "é" * rng.choice([0, 1, 2, 30, 300]) + str(i)} for i in range(n)]


def jsonl(items: list[dict[str, Any]], bad_at: int | None = None) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in items]
    if bad_at is not None:
        lines.insert(bad_at, '{"id": "broken", \n')  # a malformed line
        lines.insert(bad_at + 1, "\n")  # and a blank one
    return "".join(lines).encode()


def parquet(path: Path, items: list[dict[str, Any]], row_group_size: int) -> Path:
    pq.write_table(pa.Table.from_pylist(items), path, row_group_size=row_group_size)
    return path


def read(source: str, part: tuple[int, int] | None = None) -> tuple[list[dict[str, Any]], ReadStats]:
    stats = ReadStats()
    return list(read_rows(source, stats=stats, part=part)), stats


def key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def assert_parts_make_the_whole(source: str, ranks: int) -> list[list[dict[str, Any]]]:
    """Every rank's rows together are the whole read's, each once; the ranks' counts add up to the whole's."""
    whole, whole_stats = read(source)
    assert whole, "the input must have rows"
    parts, total = [], ReadStats()
    for rank in range(ranks):
        mine, stats = read(source, (rank, ranks))
        assert read(source, (rank, ranks))[0] == mine  # the same rows in the same order every time
        parts.append(mine)
        total.rows += stats.rows
        total.skipped += stats.skipped
        total.ignored_files += stats.ignored_files
        assert stats.rows == len(mine)
    together = [row for part in parts for row in part]
    assert Counter(map(key, together)) == Counter(map(key, whole))
    assert len({row["id"] for row in together}) == len(together)  # each row exactly once
    assert (total.rows, total.skipped, total.ignored_files) == (
        whole_stats.rows, whole_stats.skipped, whole_stats.ignored_files)
    return parts


def make_folder(root: Path) -> Path:
    """Four input files of four kinds (one of them broken), plus files that are not input."""
    root.mkdir()
    (root / "a.jsonl").write_bytes(jsonl(rows("a", 17), bad_at=5))
    parquet(root / "b.parquet", rows("b", 23, seed=1), row_group_size=4)
    (root / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(rows("c", 11, seed=2), bad_at=3)))
    (root / "d.json").write_text(json.dumps(rows("d", 9, seed=3) + [[1, 2]]))
    (root / "e.parquet").write_bytes(b"PAR1 truncated")  # unreadable: skipped and counted by its owner
    (root / ".hidden.jsonl").write_bytes(jsonl(rows("h", 2)))
    (root / "README.md").write_text("not input beside data")
    return root


@pytest.mark.parametrize("ranks", RANKS + (4, 8))
def test_a_folder_is_split_by_files_or_finer(tmp_path, ranks):
    root = make_folder(tmp_path / "folder")
    parts = assert_parts_make_the_whole(str(root), ranks)
    whole_stats = read(str(root))[1]
    assert whole_stats.skipped == {"malformed_json": 2, "not_an_object": 1, "unreadable_file": 1}
    assert whole_stats.ignored_files == {"hidden": 1, "text_beside_data": 1}
    if ranks <= 5:  # at least as many files (5) as ranks: file i goes whole to rank i % ranks
        files = ["a", "b", "c", "d", "e"]
        for rank, mine in enumerate(parts):
            assert {row["id"][0] for row in mine} <= {f for i, f in enumerate(files) if i % ranks == rank}
        assert read(str(root), (4 % ranks, ranks))[1].skipped["unreadable_file"] == 1


@pytest.mark.parametrize("ranks", RANKS + (7, 30))
def test_a_parquet_file_is_split_by_row_groups(tmp_path, ranks):
    items = rows("p", 26)
    path = parquet(tmp_path / "p.parquet", items, row_group_size=3)  # 9 row groups
    parts = assert_parts_make_the_whole(str(path), ranks)
    groups = [items[i:i + 3] for i in range(0, len(items), 3)]
    for rank, mine in enumerate(parts):
        assert mine == [row for j, group in enumerate(groups) if j % ranks == rank for row in group]


@pytest.mark.parametrize("ranks", RANKS + (7, 64))
def test_a_plain_jsonl_file_is_split_by_byte_ranges(tmp_path, ranks):
    items = rows("j", 40, seed=4)
    path = tmp_path / "j.jsonl"
    path.write_bytes(jsonl(items, bad_at=17) + b'{"id": "last", "text": "no newline"}')
    parts = assert_parts_make_the_whole(str(path), ranks)
    assert read(str(path))[1].skipped == {"malformed_json": 1}
    # Rank r reads the lines starting in [r * size / ranks, (r + 1) * size / ranks).
    data = path.read_bytes()
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n") and i + 1 < len(data)]
    for rank, mine in enumerate(parts):
        low, high = rank * len(data) // ranks, (rank + 1) * len(data) // ranks
        lines = [data[s:].split(b"\n", 1)[0] for s in starts if low <= s < high]
        assert mine == [json.loads(line) for line in lines if line.strip() and b"broken" not in line]


@pytest.mark.parametrize("ranks", RANKS)
def test_a_jsonl_file_with_crlf_and_long_lines_is_split_by_byte_ranges(tmp_path, ranks):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"".join(json.dumps({"id": f"x{i}", "text": "y" * (i * 37 % 500)}).encode() + b"\r\n"
                              for i in range(25)))
    assert_parts_make_the_whole(str(path), ranks)


@pytest.mark.parametrize("ranks", RANKS)
def test_a_gzip_jsonl_file_is_split_by_row_index(tmp_path, ranks):
    items = rows("g", 31, seed=5)
    path = tmp_path / "g.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(items, bad_at=10)))
    parts = assert_parts_make_the_whole(str(path), ranks)
    lines = jsonl(items, bad_at=10).decode().splitlines()
    for rank, mine in enumerate(parts):
        expected = [json.loads(line) for i, line in enumerate(lines) if i % ranks == rank and line.strip()
                    and line.startswith('{"id": "g')]
        assert mine == expected
    assert sum(read(str(path), (r, ranks))[1].skipped["malformed_json"] for r in range(ranks)) == 1


@pytest.mark.parametrize("ranks", (2, 3))
def test_a_truncated_gzip_file_is_counted_once(tmp_path, ranks):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(rows("t", 200)))[:-40])
    assert_parts_make_the_whole(str(path), ranks)
    assert read(str(path))[1].skipped == {"truncated_compressed_file": 1}


@pytest.mark.parametrize("ranks", RANKS)
def test_json_lists_and_text_folders_are_split(tmp_path, ranks):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(rows("l", 12) + ["not an object"]))
    assert_parts_make_the_whole(str(path), ranks)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"t{i}.txt").write_text(f"document {i}")
    (texts / "bin.txt").write_bytes(b"\x00\x01")
    assert_parts_make_the_whole(str(texts), ranks)


def test_bad_parts_are_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(rows("a", 3)))
    for part in ((2, 2), (-1, 2), (0, 0), (0.5, 2), [0, 2]):
        with pytest.raises(InputError, match="part"):
            read_rows(str(path), part=part)  # type: ignore[arg-type]


@pytest.mark.parametrize("ranks", (2, 3, 5))
def test_a_remote_prefix_and_file_are_split(s3_server, tmp_path, ranks):
    folder = tmp_path / "remote"
    folder.mkdir()
    parquet(folder / "a.parquet", rows("a", 20), row_group_size=3)
    (folder / "b.jsonl").write_bytes(jsonl(rows("b", 30, seed=6), bad_at=4))
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(rows("c", 7, seed=7))))
    prefix = s3_server.put_folder(folder, s3_server.prefix())
    assert_parts_make_the_whole(prefix, ranks)
    remote_parts = assert_parts_make_the_whole(f"{prefix}/b.jsonl", ranks)
    local_parts = [read(str(folder / "b.jsonl"), (rank, ranks))[0] for rank in range(ranks)]
    assert remote_parts == local_parts


@pytest.mark.parametrize("ranks", (2, 3))
def test_hf_datasets_and_stdin_are_split_by_row_index(tmp_path, monkeypatch, ranks):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    items = rows("h", 10, seed=8)
    (folder / "train.jsonl").write_bytes(jsonl(items))
    for rank in range(ranks):
        assert read(f"hf:{folder}", (rank, ranks))[0] == items[rank::ranks]
    data = gzip.compress(jsonl(items, bad_at=2))
    lines = jsonl(items, bad_at=2).decode().splitlines()
    skipped = Counter[str]()
    for rank in range(ranks):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
        mine, stats = read("-", (rank, ranks))
        assert mine == [json.loads(line) for i, line in enumerate(lines)
                        if i % ranks == rank and line.strip() and "broken" not in line]
        skipped += stats.skipped
    assert skipped == {"malformed_json": 1}
