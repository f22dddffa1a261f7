"""Inputs read once as a stream (stdin, a named pipe, a character device): format and compression sniffed
from the first bytes, which are kept and read again from memory, never by reopening the input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fineinstructions.io.compression import DECOMPRESSION_ERRORS, MAGIC, decompressed_stream
from fineinstructions.io.formats import (
    SUPPORTED,
    UTF8_BOM,
    UTF16_BOMS,
    json_stream_rows,
    jsonl_rows,
    text_stream_rows,
)
from fineinstructions.io.read_stats import InputError, ReadStats, Share

SNIFF_BYTES = 4096  # bytes of a stream without a format suffix (stdin, a pipe) looked at to tell its format


class _Rejoined(io.RawIOBase):
    """The bytes `head` already read from `stream`, then the rest of `stream`: a stream sniffed without seeking.

    Closing it closes `closes` (the layers below it that this reader owns).
    """

    def __init__(self, head: bytes, stream: IO[bytes], *closes: IO[bytes]) -> None:
        super().__init__()
        self._head, self._pos, self._stream, self._closes = head, 0, stream, closes
        self._read = getattr(stream, "read1", stream.read)  # what is there, without waiting for a full buffer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos < len(self._head):
            n = min(len(buffer), len(self._head) - self._pos)
            buffer[:n] = self._head[self._pos:self._pos + n]
            self._pos += n
            return n
        data = self._read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                for layer in self._closes:
                    layer.close()
            finally:
                super().close()


def _read_head(stream: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes from the start of `stream` (fewer only at its end), however a pipe delivers them."""
    head = b""
    while len(head) < size:
        more = stream.read(size - len(head))
        if not more:
            break
        head += more
    return head


def stream_rows(raw: IO[bytes], label: str, name: str, fmt: str | None, compression: str | None, what: str,
                stats: ReadStats, close: bool = True, share: Share | None = None) -> Iterator[dict[str, Any]]:
    """Rows of an input that can be read only once (a named pipe, a device, stdin), opened as `raw`.

    Its compression (by magic bytes) and, when its name gives none (`fmt` None), its format (a JSON list or JSON
    Lines) are sniffed from its first bytes, which are then read again from memory: nothing is lost or reread.
    With `share`, rows are numbered as they come and only this rank's are kept.
    """
    owned = [raw] if close else []
    try:
        return _sniffed_rows(raw, label, name, fmt, compression, what, stats, owned, share)
    except BaseException:
        for layer in reversed(owned):
            layer.close()
        raise


def _sniffed_rows(raw: IO[bytes], label: str, name: str, fmt: str | None, compression: str | None, what: str,
                  stats: ReadStats, owned: list[IO[bytes]], share: Share | None) -> Iterator[dict[str, Any]]:
    try:
        head = _read_head(raw, 8)
    except OSError as err:
        raise InputError(f"cannot read {label}: {err.strerror or err}") from err
    if not head:
        raise InputError(f"{label} is empty (0 bytes)")
    magic = next((c for c, m in MAGIC.items() if head.startswith(m)), None)
    if compression and magic != compression:
        raise InputError(f"{label} is named {Path(label).suffix} but is not {compression}-compressed")
    if fmt is None and head.startswith(b"PAR1"):
        raise InputError(f"{label} is {what} holding Parquet: Parquet needs a seekable file, pass a regular file")
    if fmt is None:
        compression = magic
    stream: IO[bytes] = io.BufferedReader(_Rejoined(head, raw, *owned))
    owned[:] = [stream]
    if compression:
        decompressed = decompressed_stream(stream, compression)
        owned[:] = [decompressed, stream]
        head = b""
        if fmt is None:
            try:
                head = _read_head(decompressed, SNIFF_BYTES)
            except DECOMPRESSION_ERRORS as err:
                raise InputError(f"cannot decompress {label}: {err}") from err
            if not head:
                raise InputError(f"{label} is empty (nothing in its {compression} data)")
        stream = io.BufferedReader(_Rejoined(head, decompressed, decompressed, stream))
        owned[:] = [stream]
    elif fmt is None:
        head = _read_head(stream, SNIFF_BYTES)
        stream = io.BufferedReader(_Rejoined(head, stream, stream))
        owned[:] = [stream]
    if head.startswith(UTF16_BOMS):
        raise InputError(f"{label} is UTF-16 encoded: save it as UTF-8")
    if fmt is None:
        start = head.removeprefix(UTF8_BOM).lstrip()[:1]
        if start not in (b"[", b"{", b""):
            raise InputError(f"cannot tell the format of {label} ({what}): it does not start with a JSON object "
                             f"or list; give it a name ending in {SUPPORTED.split(' (')[0]}, or use a regular file")
        fmt = "json" if start == b"[" else "jsonl"
    if fmt == "text":
        return text_stream_rows(stream, Path(name).stem, name, stats, share)
    if fmt == "json":
        return json_stream_rows(stream, label, name, stats, share)
    return jsonl_rows(stream, name, stats, share)
