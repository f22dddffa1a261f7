"""Committing one shard of a stage: atomic files, the output last as the completion marker.

Each (stage, shard) writes three files into the stage's folder: `rejects/shard-N.parquet` (dropped rows
with their reasons), `stats/shard-N.json` (counts, and the digest of what the shard was made from), and
last `shard-N.parquet` (the output records). A rerun reads a committed shard back instead of computing
it, unless what it depends on changed or (by default) some of its requests failed through the engine's
fault: the run's request cache answers every request that succeeded, so only the failed ones reach the
engine again, and the shards downstream follow because their inputs changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fineinstructions.io.atomic import write_json_atomic
from fineinstructions.io.run_folder import shard_output_path, shard_rejects_path, shard_stats_path
from fineinstructions.io.writers import read_records, write_records, write_rows
from fineinstructions.records import Record
from fineinstructions.stages.base import Stage, StageStats

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), drawn lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def shard_digest(records: Sequence[Record], depends: str = "") -> str:
    """What a shard's output depends on: its input records, in order, and `depends` (other state it reads)."""
    digest = hashlib.sha256(depends.encode())
    for record in records:
        digest.update(record.model_dump_json().encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def read_committed(out_dir: Path, shard: int, output_type: type[Record], digest: str | None = None,
                   retry_engine_failures: bool = True) -> tuple[list[Record], StageStats] | None:
    """A shard's committed output and stats, or None when it must run: not finished, made from other inputs
    than `digest`, or (with `retry_engine_failures`) holding requests that failed through the engine's fault.

    Shards committed before digests were stored carry none and are taken as they are.
    """
    done, stats_path = shard_output_path(out_dir, shard), shard_stats_path(out_dir, shard)
    if not (done.is_file() and stats_path.is_file()):
        return None
    stored = json.loads(stats_path.read_text())
    if digest is not None and stored.get("input_digest", digest) != digest:
        return None
    stats = StageStats.from_dict(stored)
    if retry_engine_failures and stats.engine_failures:
        return None
    return read_records(done, output_type), stats


def commit_shard(stage: Stage[Any, Any], shard: int, records: Sequence[Record], out_dir: Path, batch_size: int,
                 on_batch: Callable[[int, StageStats], None] | None = None,
                 digest: str | None = None) -> tuple[list[Record], StageStats]:
    """Run a stage over one shard and commit it: rejects, then stats, then the output (the marker), each atomic.

    A `whole_shard` stage gets the shard as one batch; `digest` (default: of `records`) is stored with the
    stats, so a rerun knows what the shard was made from.
    """
    shard_stats = StageStats()
    outputs: list[Record] = []
    rejected_rows: list[dict[str, Any]] = []
    size = max(1, len(records)) if stage.whole_shard else batch_size
    for batch in chunked(records, size):
        result = stage.run_batch(batch, shard_stats)
        outputs.extend(result.records)
        rejected_rows.extend(r.row | {"reason": r.reason, "stage": stage.name} for r in result.rejected)
        if on_batch is not None:
            on_batch(len(batch), shard_stats)
    write_rows(shard_rejects_path(out_dir, shard), rejected_rows)
    stored = shard_stats.to_dict() | {"input_digest": digest or shard_digest(records)}
    write_json_atomic(shard_stats_path(out_dir, shard), stored)
    write_records(shard_output_path(out_dir, shard), outputs, stage.output_type)  # last: the marker
    return outputs, shard_stats
