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

FOOTER_BYTES = 120  # Parquet metadata per column and row group, roughly (offsets, sizes, encodings, statistics)


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
        self._rows = self._row_groups = 0
        self._written_rows = self._written_bytes = 0  # over closed parts and the open one, for the estimate

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is None:
            self.close()
        else:
            self.abort()

    def write(self, table: pa.Table) -> None:
        """Append rows in row groups of about a fifth of the target; a part is closed once its bytes, with the
        footer it will get (FOOTER_BYTES per column and row group), reach `target_bytes` (passing it by at
        most one such row group) or it holds exactly `target_rows` rows."""
        while table.num_rows:
            if self._writer is None:
                self._open()
            assert self._writer is not None and self._sink is not None
            room = self.target_rows - self._rows if self.target_rows else table.num_rows
            room = min(room, max(1, int(self.target_bytes / 5 / self._bytes_per_row(table))))
            head, table = table.slice(0, room), table.slice(room)
            before = self._sink.tell()
            self._writer.write_table(head.cast(self.schema))
            self._rows += head.num_rows
            self._written_rows += head.num_rows
            self._written_bytes += self._sink.tell() - before
            self._row_groups += 1
            footer = FOOTER_BYTES * len(self.schema) * self._row_groups
            if self._sink.tell() + footer >= self.target_bytes or (self.target_rows and self._rows >= self.target_rows):
                self._finish()

    def _bytes_per_row(self, table: pa.Table) -> float:
        """Written bytes per row so far in this writer (compressed), else a guess from the table's size."""
        if self._written_rows:
            return max(1.0, self._written_bytes / self._written_rows)
        return max(1.0, 0.3 * table.nbytes / max(1, table.num_rows))

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
        # Statistics for the id and number columns only: min/max of long text columns would be whole texts, in
        # the footer of every row group (a part then outgrows its target by what no write reported).
        stats = [f.name for f in self.schema if not pa.types.is_string(f.type) or f.name.endswith("_id")]
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd", write_statistics=stats)
        self._rows = self._row_groups = 0

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
