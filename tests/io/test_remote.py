"""Remote inputs read through fsspec from a real S3-compatible server (moto's server mode, see conftest)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io import remote
from fineinstructions.io.readers import InputError, ReadStats, read_rows

ROWS = [{"id": f"d{i}", "text": f"document {i} " + "x" * (i * 7 % 50), "score": i / 4} for i in range(23)]


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 5) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def read(source: str, **options: Any) -> tuple[list[dict[str, Any]], ReadStats]:
    stats = ReadStats()
    return list(read_rows(source, stats=stats, **options)), stats


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz", "docs.parquet", "docs.json"])
def test_a_remote_file_reads_as_the_same_file_locally(s3_server, tmp_path, name):
    local = tmp_path / name
    if name.endswith(".parquet"):
        write_parquet(local, ROWS)
    elif name.endswith(".gz"):
        local.write_bytes(gzip.compress(jsonl_bytes(ROWS[:-1]) + b"{broken\n" + jsonl_bytes(ROWS[-1:])))
    elif name.endswith(".json"):
        local.write_text(json.dumps(ROWS))
    else:
        local.write_bytes(jsonl_bytes(ROWS[:3]) + b"not json\n" + jsonl_bytes(ROWS[3:]))
    url = s3_server.put(f"{s3_server.prefix()}/{name}", local)

    rows, stats = read(url)
    local_rows, local_stats = read(str(local))
    assert rows == local_rows == ROWS
    assert stats == local_stats


def test_a_remote_prefix_reads_as_the_same_folder_locally(s3_server, tmp_path):
    folder = tmp_path / "corpus"
    (folder / "b" / "nested").mkdir(parents=True)
    (folder / "b" / "rejects").mkdir()
    (folder / ".cache").mkdir()
    (folder / "a.jsonl").write_bytes(jsonl_bytes(ROWS[:4]))
    write_parquet(folder / "b" / "c.parquet", ROWS[4:12], row_group_size=3)
    (folder / "b" / "nested" / "d.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(ROWS[12:])))
    write_parquet(folder / "b" / "rejects" / "shard-000000.parquet", [{"reason": "null"}])
    (folder / ".cache" / "x.jsonl").write_bytes(jsonl_bytes(ROWS[:1]))
    (folder / ".hidden.jsonl").write_bytes(jsonl_bytes(ROWS[:1]))
    (folder / "README.md").write_text("A corpus.")
    (folder / "notes.csv").write_text("a,b\n")
    (folder / "empty.jsonl").write_bytes(b"")
    prefix = s3_server.put_folder(folder, s3_server.prefix())

    rows, stats = read(prefix)
    local_rows, local_stats = read(str(folder))
    assert rows == local_rows == ROWS
    assert stats.ignored_files == local_stats.ignored_files == {
        "hidden": 2, "stage_rejects": 1, "text_beside_data": 1, "unsupported_format": 1, "empty_file": 1}
    assert read(prefix + "/")[0] == ROWS
    assert [u.rsplit("/", 1)[-1] for u in remote.list_files(prefix + "/b")] == [
        "c.parquet", "d.jsonl.gz", "shard-000000.parquet"]


def test_column_projection_reads_only_the_asked_columns(s3_server, tmp_path, monkeypatch):
    local = write_parquet(tmp_path / "docs.parquet", ROWS)
    url = s3_server.put(f"{s3_server.prefix()}/docs.parquet", local)
    jsonl_url = s3_server.put(f"{s3_server.prefix()}/docs.jsonl", jsonl_bytes(ROWS))
    read_schemas: list[list[str]] = []
    iter_batches = pq.ParquetFile.iter_batches

    def spying(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        for batch in iter_batches(self, *args, **kwargs):
            read_schemas.append(batch.schema.names)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spying)
    for source in (url, str(local)):
        read_schemas.clear()
        rows, stats = read(source, columns=["id", "score", "no_such_column"])
        assert rows == [{"id": r["id"], "score": r["score"]} for r in ROWS]
        assert stats.rows == len(ROWS)
        assert read_schemas and all(names == ["id", "score"] for names in read_schemas)  # text never read
    read_schemas.clear()
    assert read(url, columns=["text"], without=["text"])[0] == [{}] * len(ROWS)
    assert all(names == [] for names in read_schemas)
    assert read(jsonl_url, columns=["text"])[0] == [{"text": r["text"]} for r in ROWS]


def test_upload_then_read_back(s3_server, tmp_path):
    local = write_parquet(tmp_path / "part-00000.parquet", ROWS)
    url = f"{s3_server.prefix()}/dataset/part-00000.parquet"
    remote.upload(local, url)
    assert read(url)[0] == ROWS
    assert remote.list_files(url.rsplit("/", 1)[0]) == [url]
    with pytest.raises(remote.RemoteError, match="cannot upload"):
        remote.upload(tmp_path / "missing.parquet", url)
    local_copy = tmp_path / "copy" / "part.parquet"
    remote.upload(local, f"file://{local_copy}")  # any fsspec URL, the local one too
    assert read(str(local_copy))[0] == ROWS


def test_a_missing_object_is_a_clear_input_error(s3_server):
    prefix = s3_server.prefix()
    for url in (f"{prefix}/missing.jsonl", f"{prefix}/missing/", "s3://no-such-bucket-here/x.parquet"):
        with pytest.raises(InputError, match="input not found") as caught:
            read_rows(url)  # raises at once, before a row is pulled
        assert url.rstrip("/") in str(caught.value)
        assert isinstance(caught.value, FineInstructionsError)


def test_other_remote_failures_are_input_errors(s3_server, tmp_path):
    prefix = s3_server.prefix()
    with pytest.raises(InputError, match="unknown input format"):
        read_rows(s3_server.put(f"{prefix}/data.xyz", b"abc"))
    with pytest.raises(InputError, match="is empty"):
        read_rows(s3_server.put(f"{prefix}/empty.jsonl", b""))
    with pytest.raises(InputError, match="holds no input files.*'unsupported_format': 1, 'empty_file': 1"):
        read_rows(f"{prefix}/")
    with pytest.raises(InputError, match="not gzip-compressed"):
        read_rows(s3_server.put(f"{prefix}/data.jsonl.gz", b'{"a": 1}\n'))
    with pytest.raises(InputError, match="as Parquet"):
        read_rows(s3_server.put(f"{prefix}/bad.parquet", b"PAR1 not really"))
    with pytest.raises(InputError, match="UTF-16"):
        read_rows(s3_server.put(f"{prefix}/utf16.jsonl", '{"a": 1}\n'.encode("utf-16")))
    with pytest.raises(InputError, match="cannot use"):
        read_rows("nosuchprotocol://bucket/x.jsonl")
    # Inside a prefix, a broken file is skipped and counted; the others are read.
    s3_server.put(f"{prefix}/good.jsonl", jsonl_bytes(ROWS[:2]))
    rows, stats = read(prefix)
    assert rows == ROWS[:2]
    assert stats.skipped == {"unreadable_file": 3}
    assert stats.ignored_files == {"unsupported_format": 1, "empty_file": 1}


def test_an_unreachable_endpoint_is_an_input_error(monkeypatch):
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(InputError, match=r"s3://bucket/x\.jsonl"):
        read_rows("s3://bucket/x.jsonl")


def test_what_is_remote():
    assert remote.is_remote("s3://bucket/key.jsonl")
    assert remote.is_remote("gs://bucket/prefix/")
    assert remote.is_remote("hf://datasets/owner/name/data/train.parquet")
    for local in ("docs.jsonl", "/data/docs", "-", "hf:owner/name", "hf:/local/folder", "file:///tmp/x.jsonl",
                  "./odd://name"):
        assert not remote.is_remote(local)


def test_the_endpoint_comes_from_the_environment(monkeypatch):
    for name in remote.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert remote.storage_options("s3") == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws.example")
    assert remote.storage_options("s3") == {"endpoint_url": "http://aws.example"}
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://minio.example:9000")
    assert remote.storage_options("s3") == {"endpoint_url": "http://minio.example:9000"}
    assert remote.storage_options("gs") == {}
    fs, inner = remote.filesystem("s3://bucket/a/b.jsonl")
    assert inner == "bucket/a/b.jsonl"
    assert fs.client_kwargs.get("endpoint_url", fs.endpoint_url) == "http://minio.example:9000"


def test_file_urls_are_local_paths(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(ROWS[:2]))
    assert read(f"file://{tmp_path / 'a.jsonl'}")[0] == ROWS[:2]
