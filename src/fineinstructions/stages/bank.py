"""A template bank of millions (the released FineTemplates has ~18M) into a template index, in bounded memory.

`build_bank_index` takes the templates as a stream of Arrow batches and never holds them, or their vectors,
all at once:

(a) the templates are written into the index's `templates.arrow` as they arrive, deduplicated by id through
    64-bit hashes of the ids (8 bytes a template, not the strings);
(b) their descriptions are embedded shard by shard (`shard_rows` rows each) into float16 `.npy` shards,
    each written atomically, in `workers` processes when asked; a shard already embedded from the same
    descriptions by the same model is kept, so a killed build resumes where it stopped;
(c) the FAISS index is trained on a seeded sample read from the memory-mapped shards, then filled shard by
    shard from them;
(d) index, templates, the shards (for `RDisk` kinds, which re-score with them) and metadata are saved
    through `TemplateIndex.save` (one atomic rename), loadable with `TemplateIndex.load`.

Work in progress lives in `.NAME.building` beside the index folder and is removed once the index is saved.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from fineinstructions.backends.embeddings import Embedder, hash_segments, make_embedder
from fineinstructions.io.atomic import remove_stale_temporaries, write_text_atomic
from fineinstructions.records import Template
from fineinstructions.stages.index import (
    DEFAULT_TEMPLATE_TEXT,
    SHARD_ROWS,
    TEMPLATE_BATCH_ROWS,
    TEMPLATES_FILE,
    VECTORS_DIR,
    TemplateIndex,
    TemplateIndexError,
    VectorShards,
    embedded_text,
    empty_faiss_index,
    new_faiss_index,
    resolve_spec,
    sample_rows,
    shard_name,
    split_spec,
    write_shard,
    write_templates,
)

log = logging.getLogger(__name__)

DESCRIPTION = "compatible_document_description"
EMBED_BATCH = 8_192  # descriptions per `encode` call
ADD_BATCH = 65_536  # vectors per FAISS `add` call


def build_bank_index(batches: Iterable[pa.RecordBatch | pa.Table], embedder: Embedder, directory: Path,
                     spec: str = "auto", train_size: int = 100_000, deduplicate: bool = True, seed: int = 0,
                     workers: int = 1, shard_rows: int = SHARD_ROWS,
                     text: str = DEFAULT_TEMPLATE_TEXT) -> dict[str, Any]:
    """Build a template index in `directory` from templates streamed as Arrow batches; return its metadata.

    The batches carry the Template schema (`Template.arrow_schema()`; optional columns may be missing and
    take their defaults). With `deduplicate`, a template whose id came before is dropped (the first is kept):
    the ids seen are kept as sorted 64-bit hashes, 8 bytes a template (twice that while the largest runs
    merge), so 18M templates cost ~150 MB; two distinct ids share a hash with odds of ~1e-5 at 18M. Pass
    `deduplicate=False` for a bank whose ids are already unique (the released FineTemplates).

    Peak memory: one batch of templates, one shard of vectors (float16 and float32), the training sample
    and the FAISS index being filled. With `workers` > 1 each process builds its own embedder with
    `make_embedder` (on a GPU machine, device `auto` picks the GPU).
    """
    directory = Path(directory)
    started = time.perf_counter()
    work = directory.parent / f".{directory.name}.building"
    (work / VECTORS_DIR).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(work, [work, work / VECTORS_DIR])  # files of a killed build

    templates_path = work / TEMPLATES_FILE
    batch_rows = min(shard_rows, TEMPLATE_BATCH_ROWS)
    count, duplicates = _write_bank_templates(batches, templates_path, deduplicate, batch_rows)
    kind = resolve_spec(spec, count, embedder.dimension)
    probe = empty_faiss_index(kind, embedder.dimension)  # an unparseable kind fails before any embedding
    log.info("bank: %d templates written (%d duplicates dropped) in %.0f s; kind %s", count, duplicates,
             time.perf_counter() - started, kind)

    ranges = [(a, min(a + shard_rows, count)) for a in range(0, count, shard_rows)]
    _embed_shards(templates_path, work / VECTORS_DIR, ranges, embedder, workers, text)
    log.info("bank: vectors ready at %.0f s", time.perf_counter() - started)
    vectors = VectorShards.open(work / VECTORS_DIR, len(ranges), shard_rows)
    index = faiss_index_from_shards(kind, vectors, train_size, seed, probe)
    log.info("bank: index trained and filled at %.0f s", time.perf_counter() - started)

    table = pa.ipc.open_file(pa.memory_map(str(templates_path))).read_all()  # mapped: nothing read yet
    built = TemplateIndex(index, table, embedder.model_id, embedder.fingerprint, kind, duplicates,
                          vectors if split_spec(kind)[1] else None, templates_file=templates_path)
    built.save(directory)
    meta = built.meta()
    del built, table, vectors
    shutil.rmtree(work, ignore_errors=True)
    return meta


def faiss_index_from_shards(kind: str, vectors: VectorShards, train_size: int = 100_000, seed: int = 0,
                            probe: faiss.Index | None = None) -> faiss.Index:
    """A FAISS index of kind `kind` over the vectors of `vectors`' shard files (memory-mapped), trained on a
    seeded sample of `train_size` rows, then filled shard by shard. Each shard is mapped only while it is
    read, so the process's resident memory holds one shard at a time, not the bank."""
    assert vectors.folder is not None, "the shards must be files"
    probe = probe if probe is not None else empty_faiss_index(kind, vectors.dimension)
    training = None
    if not probe.is_trained:
        rows = sample_rows(vectors.ntotal, train_size, seed)
        training = np.empty((len(rows), vectors.dimension), dtype=np.float32)
        for number, (shard, lo, hi) in enumerate(_shard_spans(vectors, rows)):
            training[lo:hi] = shard[rows[lo:hi] - number * vectors.rows_per_shard]
            del shard
    index = new_faiss_index(kind, vectors.dimension, training)
    del training
    for number in range(len(vectors.shards)):
        shard = np.load(vectors.folder / shard_name(number), mmap_mode="r")
        for start in range(0, len(shard), ADD_BATCH):
            index.add(np.ascontiguousarray(shard[start : start + ADD_BATCH], dtype=np.float32))
        del shard
    return index


def _shard_spans(vectors: VectorShards, rows: np.ndarray) -> Iterator[tuple[np.ndarray, int, int]]:
    """For each shard file in turn: the shard, freshly memory-mapped, and the span [lo, hi) of the sorted
    `rows` that fall in it."""
    assert vectors.folder is not None
    bounds = np.searchsorted(rows, np.arange(len(vectors.shards) + 1) * vectors.rows_per_shard)
    for number in range(len(vectors.shards)):
        yield np.load(vectors.folder / shard_name(number), mmap_mode="r"), int(bounds[number]), int(bounds[number + 1])


# -- (a) templates ------------------------------------------------------------------------------------


class SeenHashes:
    """A set of 64-bit hashes as a few sorted runs that merge like a binary counter: 8 bytes a member (twice
    that briefly while the two largest runs merge), O(log n) runs to search."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def first_seen(self, hashes: np.ndarray) -> np.ndarray:
        """A mask of the hashes never seen before (in this call, the first of equal ones); remember them."""
        unique, first = np.unique(hashes, return_index=True)
        new = np.ones(len(unique), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, unique), len(run) - 1)
            new &= run[at] != unique
        mask = np.zeros(len(hashes), dtype=bool)
        mask[first[new]] = True
        run = unique[new]
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]))
        if len(run):
            self.runs.append(run)
        return mask

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)


def hash_ids(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of a string column's values, read straight from its Arrow buffers (no Python strings)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.large_string())
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    first = int(offsets[0])  # a slice of a larger array: hash only its own bytes
    return hash_segments(data[first : int(offsets[-1])], offsets[:-1] - first, offsets[1:] - first)


def conform(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """A batch in the Template schema: columns in order and cast, missing optional columns filled with their
    defaults; a missing or null id or description is an error."""
    schema = Template.arrow_schema()
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if not field.nullable and column.null_count:
                raise TemplateIndexError(f"template batch: {column.null_count} rows have no {field.name}")
            columns.append(column.cast(field.type))
            continue
        model_field = Template.model_fields[field.name]
        if model_field.is_required():
            raise TemplateIndexError(f"template batch has no {field.name!r} column")
        default = model_field.get_default(call_default_factory=True)
        columns.append(pa.array([default] * table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _write_bank_templates(batches: Iterable[pa.RecordBatch | pa.Table], path: Path, deduplicate: bool,
                          batch_rows: int) -> tuple[int, int]:
    """Stream the templates into the Arrow file at `path` in batches of `batch_rows` rows (the first of each
    id only, with `deduplicate`); return (templates written, duplicates dropped)."""
    seen = SeenHashes() if deduplicate else None
    dropped = 0

    def kept() -> Iterator[pa.Table]:
        nonlocal dropped
        for batch in batches:
            table = conform(batch)
            if seen is not None and table.num_rows:
                mask = seen.first_seen(hash_ids(table.column("template_id")))
                dropped += int(len(mask) - mask.sum())
                table = table.filter(pa.array(mask))
            yield table

    rows = write_templates(path, Template.arrow_schema(), _rechunk(kept(), batch_rows))
    return rows, dropped


def _rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly `rows` rows (the last may be shorter) from tables of any size."""
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        pending.append(table)
        held += table.num_rows
        if held < rows:
            continue
        merged = pa.concat_tables(pending).combine_chunks()
        full = (held // rows) * rows
        for start in range(0, full, rows):
            yield from merged.slice(start, rows).to_batches(max_chunksize=rows)
        pending, held = [merged.slice(full)], held - full
    if held:
        yield from pa.concat_tables(pending).combine_chunks().to_batches(max_chunksize=rows)


# -- (b) vectors --------------------------------------------------------------------------------------


def _embed_shards(templates_path: Path, folder: Path, ranges: list[tuple[int, int]], embedder: Embedder,
                  workers: int, text: str = DEFAULT_TEMPLATE_TEXT) -> None:
    """Embed the templates' `text` of each row range into its float16 shard (kept if already done)."""
    tasks = [(templates_path, folder, number, start, stop, text) for number, (start, stop) in enumerate(ranges)]
    if workers <= 1 or len(tasks) <= 1:
        done = sum(embed_shard(*task[:5], embedder, text) for task in tasks)
    else:
        spawn = get_context("spawn")  # no fork of a process holding OpenMP or CUDA state
        settings = (embedder.model_id, embedder.device, embedder.batch_size, embedder.revision, embedder.fingerprint)
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=spawn, initializer=_start_worker,
                                 initargs=settings) as pool:
            done = sum(pool.map(_embed_in_worker, tasks))
    log.info("bank: embedded %d of %d vector shards (the others were done before)", done, len(tasks))


_worker_embedder: Embedder | None = None


def _start_worker(model: str, device: str, batch_size: int, revision: str | None, fingerprint: str) -> None:
    global _worker_embedder
    _worker_embedder = make_embedder(model, device, batch_size, revision)
    if _worker_embedder.fingerprint != fingerprint:
        raise TemplateIndexError(f"worker embedder {model!r} is not the one asked for ({fingerprint})")


def _embed_in_worker(task: tuple[Path, Path, int, int, int, str]) -> bool:
    assert _worker_embedder is not None
    templates_path, folder, number, start, stop, text = task
    return embed_shard(templates_path, folder, number, start, stop, _worker_embedder, text)


def embed_shard(templates_path: Path, folder: Path, number: int, start: int, stop: int, embedder: Embedder,
                text: str = DEFAULT_TEMPLATE_TEXT) -> bool:
    """Embed the `text` (`embedded_text`) of rows [start, stop) into `folder`/shard-NNNNN.npy; return False when
    the shard is already there from the same texts and model (its `.key` file says so), True if embedded."""
    descriptions = read_column(templates_path, DESCRIPTION, start, stop)
    if text != "description":
        templates = read_column(templates_path, "template", start, stop)
        descriptions = [embedded_text(t, d, text) for t, d in zip(templates, descriptions, strict=True)]
    digest = hashlib.sha256(f"{embedder.fingerprint}|{start}|{stop}|".encode())
    for text in descriptions:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    key = digest.hexdigest()
    path = folder / shard_name(number)
    key_path = path.with_suffix(".key")
    if path.is_file() and key_path.is_file() and key_path.read_text() == key:
        return False
    path.unlink(missing_ok=True)  # the key must never vouch for another shard's vectors
    write_text_atomic(key_path, key)
    vectors = np.empty((stop - start, embedder.dimension), dtype=np.float16)
    for a in range(0, len(descriptions), EMBED_BATCH):
        vectors[a : a + EMBED_BATCH] = embedder.encode(descriptions[a : a + EMBED_BATCH])
    write_shard(path, vectors)
    return True


def read_column(path: Path, name: str, start: int, stop: int) -> list[str]:
    """Rows [start, stop) of one string column of an Arrow IPC file whose batches all hold the same number of
    rows but the last (as `build_bank_index` writes it), reading only the batches that hold them (read, not
    memory-mapped, so their pages do not stay in this process's memory)."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        if reader.num_record_batches == 0 or stop <= start:
            return []
        size = reader.get_batch(0).num_rows
        values: list[str] = []
        for i in range(start // size, min(-(-stop // size), reader.num_record_batches)):
            batch = reader.get_batch(i)
            if batch.num_rows != size and i != reader.num_record_batches - 1:
                raise TemplateIndexError(f"{path}: record batches of unequal sizes ({batch.num_rows}, {size})")
            lo, hi = max(start - i * size, 0), min(stop - i * size, batch.num_rows)
            values.extend(batch.column(name).slice(lo, hi - lo).to_pylist())
        return values
