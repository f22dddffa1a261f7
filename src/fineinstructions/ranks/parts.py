"""Dataset parts of a target size: pairs stream into one Parquet file until it reaches the target, then the
next; each part is written under a temporary name and renamed when closed, so no part is ever half-written.

Parts are named `part-NNNNNN.parquet` inside their rank's folder (`dataset/rank-NNNNN/`), so a listing sorts
in the order the run produced them, and the folder loads as one dataset
(`datasets.load_dataset("parquet", data_dir=...)`, `pyarrow.dataset.dataset(...)`).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq


def part_name(part: int) -> str:
    return f"part-{part:06d}.parquet"


class PartWriter:
    """Writes tables as row groups into parts of about `target_bytes` (or `target_rows`) each."""

    def __init__(self, folder: Path, schema: pa.Schema, target_bytes: int, target_rows: int | None = None):
        self.folder = folder
        self.schema = schema
        self.target_bytes = target_bytes
        self.target_rows = target_rows
        self.parts: list[dict[str, int | str]] = []  # name, rows, bytes of each closed part
        self._writer: pq.ParquetWriter | None = None
        self._sink: pa.NativeFile | None = None
        self._tmp: Path | None = None
        self._rows = 0

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is None:
            self.close()
        else:
            self.abort()

    def write(self, table: pa.Table) -> None:
        """Append rows as a row group; a part is closed once it reaches `target_bytes` (so it may pass it by
        one row group) or holds exactly `target_rows` rows (a table is split at that boundary)."""
        while table.num_rows:
            if self._writer is None:
                self._open()
            assert self._writer is not None and self._sink is not None
            room = self.target_rows - self._rows if self.target_rows else table.num_rows
            head, table = table.slice(0, room), table.slice(room)
            self._writer.write_table(head.cast(self.schema))
            self._rows += head.num_rows
            if self._sink.tell() >= self.target_bytes or (self.target_rows and self._rows >= self.target_rows):
                self._finish()

    def close(self) -> None:
        """Close the part being written (when it holds rows)."""
        if self._writer is not None:
            self._finish()

    def abort(self) -> None:
        """Drop the part being written (a failure mid-part leaves no file behind)."""
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._writer = self._sink = self._tmp = None

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = part_name(len(self.parts))
        self._tmp = self.folder / f".{name}.tmp-{os.getpid()}"
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._rows = 0

    def _finish(self) -> None:
        assert self._writer is not None and self._sink is not None and self._tmp is not None
        self._writer.close()
        self._sink.close()
        name = part_name(len(self.parts))
        with open(self._tmp, "rb") as handle:
            os.fsync(handle.fileno())
        size = self._tmp.stat().st_size
        os.replace(self._tmp, self.folder / name)
        self.parts.append({"name": name, "rows": self._rows, "bytes": size})
        self._writer = self._sink = self._tmp = None
