"""Compressed inputs: the compressions a file name may end in, their magic bytes, and decompressing readers (of a
local path, or of a stream such as a remote file opened with fsspec)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}  # for .jsonl and .json files
MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}
DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, pa.ArrowException)


def decompressed_stream(stream: IO[bytes], compression: str) -> IO[bytes]:
    """A reader of `stream`'s decompressed bytes (closing it leaves `stream` open)."""
    if compression == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if compression == "bz2":
        return bz2.BZ2File(stream, "rb")
    if compression == "xz":
        return lzma.LZMAFile(stream, "rb")
    return cast(IO[bytes], pa.CompressedInputStream(pa.PythonFile(stream, mode="r"), "zstd"))


def owned_decompressed(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    """A reader of `raw`'s bytes, decompressed when `compression` names one; closing it closes `raw` too."""
    if compression is None:
        return raw
    try:
        return io.BufferedReader(_Owning(decompressed_stream(raw, compression), raw))
    except BaseException:
        raw.close()
        raise


class _Owning(io.RawIOBase):
    """Reads `top`; closing it closes `top`, then `below` (the stream `top` reads from)."""

    def __init__(self, top: IO[bytes], below: IO[bytes]) -> None:
        super().__init__()
        self._top, self._below = top, below

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._top.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._top.close()
            finally:
                self._below.close()
                super().close()


def open_decompressed(path: Path, compression: str | None) -> IO[bytes]:
    """A reader of the file's bytes, decompressed when `compression` names one (gzip, bz2, xz, zstd)."""
    if compression == "gzip":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(pa.input_stream(str(path), compression="zstd"))
    return path.open("rb")
