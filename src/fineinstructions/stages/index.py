"""Stage 3: embed the templates' compatible-document descriptions into a FAISS inner-product index.

The index kind is a FAISS factory string: `Flat` (exact), `IVF{nlist},Flat`, `IVF{nlist},PQ{m}` (compressed,
trained on a sample), fast-scan `IVF{nlist},PQ{m}x4fs` with re-scoring (`,RFlat` or `,Refine(PQ{m})`),
or `HNSW{M}`; `auto` picks one from the bank's size (see `resolve_spec`). One suffix is ours, not FAISS':
`,RDisk` re-scores the compressed index's candidates exactly with the full vectors, kept as float16 row
shards on disk (`vectors/shard-NNNNN.npy`) and memory-mapped, so RAM holds the compressed codes and the
pages a search touches. The templates themselves sit next to the vectors in an uncompressed Arrow file
that is memory-mapped too, so a bank of millions costs the pages a search touches, not its size. A bank too
large for one machine is split into shards whose results are merged by score. Banks that do not fit in
memory as records are built from Arrow batches by `stages.bank.build_bank_index`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.atomic import atomic_dir, atomic_path
from fineinstructions.records import Template

log = logging.getLogger(__name__)

INDEX_FILE = "templates.faiss"
META_FILE = "index.json"
TEMPLATES_FILE = "templates.arrow"
VECTORS_DIR = "vectors"
RESCORE_FROM_DISK = "RDisk"  # the kind suffix of exact re-scoring with the float16 vectors on disk
SHARD_ROWS = 131_072  # rows per float16 vector shard (96 MiB at 384 dimensions)
TEMPLATE_BATCH_ROWS = 65_536  # rows per record batch of the templates file
AUTO_EXACT_LIMIT = 50_000  # `auto` stays exact up to this many templates
AUTO_FULL_VECTORS_LIMIT = 2_000_000  # and re-scores with full vectors in memory up to this many


class TemplateIndexError(FineInstructionsError):
    """A template index that cannot be built or used as asked (a bad FAISS factory string, a folder that holds
    no index, an index that does not match its templates)."""


class IndexMismatch(TemplateIndexError):
    """The index was built with another embedding model than the one asked to query it."""


TEMPLATE_TEXTS = ("description", "template", "both")
DEFAULT_TEMPLATE_TEXT = "both"


def embedded_text(template: str, description: str, text: str = DEFAULT_TEMPLATE_TEXT) -> str:
    """What is embedded for a template (`match.template_text`): its compatible-document description (the
    paper's choice, with its fine-tuned embedder), its template text with the `<fi>` tags dropped (the
    variables' descriptions stay words), or both, the template first."""
    if text == "description":
        return description
    plain = " ".join(re.sub(r"</?fi>", " ", template).split())
    if text == "template":
        return plain
    if text == "both":
        return f"{plain}\n{description}"
    raise ValueError(f"template text {text!r}: one of {', '.join(TEMPLATE_TEXTS)}")


def resolve_spec(spec: str, n: int, dim: int) -> str:
    """The FAISS factory string for `spec` and a bank of `n` vectors of `dim` ('auto' decides by size).

    auto: exact `Flat` up to 50k templates; then IVF with ~4 sqrt(n) lists (at most 4096, so training
    stays minutes on a laptop) over 4-bit fast-scan PQ codes, whose candidates are re-scored with the
    full vectors: held in memory (`RFlat`) up to 2M templates, memory-mapped float16 vectors on disk
    beyond (`RDisk`), which keeps the RAM of 18M templates of 384 dimensions at the codes (~0.5 GB).
    """
    if spec != "auto":
        return spec
    if n <= AUTO_EXACT_LIMIT:
        return "Flat"
    nlist = min(4096, 1 << int(round(math.log2(4 * math.sqrt(n)))))
    m = next((m for m in (dim // 12, dim // 8, dim // 4, dim // 2) if m % 2 == 0 and m and dim % m == 0), dim)
    refine = "RFlat" if n <= AUTO_FULL_VECTORS_LIMIT else RESCORE_FROM_DISK
    return f"IVF{nlist},PQ{m}x4fs,{refine}"


def split_spec(spec: str) -> tuple[str, bool]:
    """(the FAISS factory string, whether candidates are re-scored from the vectors on disk) of a kind."""
    parts = spec.split(",")
    if parts[-1] == RESCORE_FROM_DISK:
        if len(parts) == 1:
            raise TemplateIndexError(f"{spec!r}: {RESCORE_FROM_DISK} follows a compressed kind, e.g. "
                                     f"IVF4096,PQ32x4fs,{RESCORE_FROM_DISK}")
        return ",".join(parts[:-1]), True
    return spec, False


def empty_faiss_index(spec: str, dim: int) -> faiss.Index:
    """An empty inner-product index of kind `spec` (a clear error for a string FAISS cannot parse)."""
    factory, _ = split_spec(spec)
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1]
        raise TemplateIndexError(f"{spec!r} is not a FAISS index factory string ({reason})") from err


def new_faiss_index(spec: str, dim: int, training: np.ndarray | None) -> faiss.Index:
    """An empty inner-product index of kind `spec`, trained on `training` when the kind needs it."""
    index = empty_faiss_index(spec, dim)
    if not index.is_trained:
        if training is None or len(training) == 0:
            raise ValueError(f"a {spec} index must be trained, and no training vectors were given")
        index.train(np.ascontiguousarray(training, dtype=np.float32))
    return index


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None,
                      refine_k_factor: int | None = None) -> None:
    """Set nprobe (IVF), efSearch (HNSW) and the re-ranking depth of `,Refine(...)`/`,RFlat` kinds (k x
    factor candidates re-scored) where the index has them; other kinds ignore them."""
    params = faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", refine_k_factor)):
        if value is None:
            continue
        with contextlib.suppress(RuntimeError):  # the parameter does not apply to this index kind
            params.set_index_parameter(index, name, int(value))


def _is_fast_scan(index: faiss.Index) -> bool:
    with contextlib.suppress(RuntimeError):
        index = faiss.downcast_index(faiss.extract_index_ivf(index))
    return "FastScan" in type(faiss.downcast_index(index)).__name__


def _decoder(index: faiss.Index) -> faiss.Index:
    """The part of an index that can decode vectors: the re-scoring store of Refine kinds, else itself."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.refine_index)
    return index


def _read_faiss(path: Path, spec: str, mmap: bool) -> faiss.Index:
    # Fast-scan kinds (`PQ32x4fs`) are read into memory: FAISS crashes decoding memory-mapped fast-scan codes.
    fast_scan = any(part.endswith(("fs", "fsr")) for part in spec.split(","))
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap and not fast_scan else 0)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of min(size, n) row numbers out of n (the vectors that train IVF/PQ)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))


def _read_meta(directory: Path, embedder: Embedder | None) -> dict[str, Any]:
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise TemplateIndexError(f"{directory} is not a template index (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if embedder is not None and meta["embedder_fingerprint"] != embedder.fingerprint:
        raise IndexMismatch(
            f"index {directory} was built with embedding model {meta['embedder']!r} "
            f"(fingerprint {meta['embedder_fingerprint']}), not {embedder.model_id!r} "
            f"({embedder.fingerprint}); rebuild it or query it with the same model"
        )
    return meta


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


def write_shard(path: Path, vectors: np.ndarray) -> None:
    """Write one vector shard (.npy) atomically: a killed write leaves no file under its name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)


def link_or_copy(source: Path, target: Path) -> None:
    """Give `target` the content of `source`: a hard link where the file system allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class VectorShards:
    """Unit vectors as float16 row shards of `rows_per_shard` rows each (the last may be shorter): memory-mapped
    `vectors/shard-NNNNN.npy` files of a folder, or arrays in memory (until saved).

    Reading rows touches only the pages that hold them: a memory-mapped bank of millions costs what is read.
    """

    def __init__(self, shards: Sequence[np.ndarray], rows_per_shard: int, folder: Path | None = None):
        self.shards = list(shards)
        self.rows_per_shard = rows_per_shard
        self.folder = folder
        self.ntotal = sum(len(s) for s in self.shards)
        self.dimension = int(self.shards[0].shape[1]) if self.shards else 0

    @classmethod
    def from_array(cls, vectors: np.ndarray, rows_per_shard: int = SHARD_ROWS) -> VectorShards:
        """In-memory shards of these vectors (stored as float16)."""
        vectors = np.asarray(vectors, dtype=np.float16)
        return cls([vectors[a : a + rows_per_shard] for a in range(0, len(vectors), rows_per_shard)],
                   rows_per_shard)

    @classmethod
    def open(cls, folder: Path, count: int, rows_per_shard: int, mmap: bool = True) -> VectorShards:
        """The `count` shards saved in `folder`, memory-mapped unless `mmap` is False."""
        shards = [np.load(folder / shard_name(i), mmap_mode="r" if mmap else None) for i in range(count)]
        if any(len(s) != rows_per_shard for s in shards[:-1]):
            raise TemplateIndexError(f"{folder}: vector shards do not hold {rows_per_shard} rows each")
        return cls(shards, rows_per_shard, folder if mmap else None)

    def take(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The float32 vectors of these rows, in the order asked (each shard read in row order)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        shard = ordered // self.rows_per_shard
        starts = np.flatnonzero(np.diff(shard, prepend=-1))
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(ids)], strict=True):
            s = int(shard[a])
            out[order[a:b]] = self.shards[s][ordered[a:b] - s * self.rows_per_shard]
        return out

    def write(self, folder: Path) -> None:
        """Save the shards into `folder` (linked from the files they are mapped from, where there are files)."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, shard in enumerate(self.shards):
            if self.folder is not None:
                link_or_copy(self.folder / shard_name(i), folder / shard_name(i))
            else:
                write_shard(folder / shard_name(i), np.asarray(shard, dtype=np.float16))

    def meta(self) -> dict[str, Any]:
        return {"dtype": "float16", "rows_per_shard": self.rows_per_shard, "shards": len(self.shards)}


def rescore(queries: np.ndarray, candidates: np.ndarray, vectors: VectorShards, k: int,
            block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) of each query among its candidate ids (-1: none), scored with `vectors`.

    Queries go `block` at a time, so the gathered candidate vectors stay a few MB.
    """
    n, depth = candidates.shape
    k = min(k, depth)
    scores_out = np.full((n, k), -np.finfo(np.float32).max, dtype=np.float32)
    ids_out = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, block):
        ids = candidates[start : start + block]
        valid = ids >= 0
        unique, inverse = np.unique(ids[valid], return_inverse=True)
        gathered = vectors.take(unique)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        rows = np.nonzero(valid)[0]
        scores[valid] = np.einsum("nd,nd->n", queries[start : start + block][rows], gathered[inverse])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        found = np.isfinite(top)
        scores_out[start : start + block] = np.where(found, top, scores_out[start : start + block])
        ids_out[start : start + block] = np.where(found, np.take_along_axis(ids, order, axis=1), -1)
    return scores_out, ids_out


class TemplateIndex:
    """Template vectors in one FAISS index, with the templates (an Arrow table) in the same row order.

    `RDisk` kinds also hold the full vectors (`VectorShards`) that re-score the index's candidates.
    """

    def __init__(self, index: faiss.Index, table: pa.Table, embedder_id: str, embedder_fingerprint: str,
                 spec: str = "Flat", duplicates_removed: int = 0, vectors: VectorShards | None = None,
                 templates_file: Path | None = None):
        if index.ntotal != table.num_rows:
            raise TemplateIndexError(f"index holds {index.ntotal} vectors but {table.num_rows} templates")
        if split_spec(spec)[1] and (vectors is None or vectors.ntotal != index.ntotal):
            raise TemplateIndexError(f"a {spec} index needs its {index.ntotal} full vectors to re-score with")
        self.index = index
        self.table = table
        self.embedder_id = embedder_id
        self.embedder_fingerprint = embedder_fingerprint
        self.spec = spec
        self.duplicates_removed = duplicates_removed
        self.vectors = vectors if split_spec(spec)[1] else None
        self.templates_file = templates_file  # the Arrow file `table` is mapped from, if any (saved by linking)
        self.refine_k_factor = 16
        self._direct_map = False

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def build(cls, templates: Sequence[Template], embedder: Embedder, spec: str = "auto",
              train_size: int = 100_000, batch_size: int = 10_000, seed: int = 0,
              text: str = DEFAULT_TEMPLATE_TEXT) -> TemplateIndex:
        """Exact-deduplicate templates by id (first kept), embed their `text` (`embedded_text`) and index them.

        Kinds that need training are trained on an evenly spread sample of `train_size` descriptions;
        vectors are added `batch_size` at a time, so memory holds one batch of vectors, not the bank.
        """
        kept = unique_templates(templates)
        descriptions = [embedded_text(t.template, t.compatible_document_description, text) for t in kept]
        kind = resolve_spec(spec, len(kept), embedder.dimension)
        probe = empty_faiss_index(kind, embedder.dimension)  # an unparseable kind fails before any embedding
        training = None
        if not probe.is_trained:
            training = embedder.encode([descriptions[i] for i in sample_rows(len(kept), train_size, seed)])
        index = new_faiss_index(kind, embedder.dimension, training)
        full: list[np.ndarray] = []  # the float16 vectors an RDisk kind re-scores with
        for start in range(0, len(descriptions), batch_size):
            batch = np.ascontiguousarray(embedder.encode(descriptions[start : start + batch_size]))
            index.add(batch)
            if split_spec(kind)[1]:
                full.append(batch.astype(np.float16))
        vectors = None
        if split_spec(kind)[1]:
            vectors = VectorShards.from_array(np.concatenate(full) if full else np.zeros((0, embedder.dimension)))
        return cls(index, Template.to_table(kept), embedder.model_id, embedder.fingerprint, kind,
                   len(templates) - len(kept), vectors)

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, table: pa.Table, embedder_id: str, embedder_fingerprint: str,
                     spec: str = "auto", train_size: int = 100_000, seed: int = 0) -> TemplateIndex:
        """Index ready-made unit vectors (row i describes table row i)."""
        kind = resolve_spec(spec, len(vectors), vectors.shape[1])
        training = vectors[sample_rows(len(vectors), train_size, seed)]
        index = new_faiss_index(kind, vectors.shape[1], training)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        full = VectorShards.from_array(vectors) if split_spec(kind)[1] else None
        return cls(index, table, embedder_id, embedder_fingerprint, kind, vectors=full)

    # -- querying -----------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def templates(self) -> list[Template]:
        """Every template as a record (materialises the whole bank: for small banks and tests)."""
        return Template.from_table(self.table)

    def configure(self, nprobe: int | None = None, ef_search: int | None = None,
                  refine_k_factor: int | None = None) -> None:
        """Search settings (see `set_search_params`); `refine_k_factor` is also the re-scoring depth of RDisk."""
        set_search_params(self.index, nprobe, ef_search, refine_k_factor)
        if refine_k_factor is not None:
            self.refine_k_factor = int(refine_k_factor)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row ids) per query vector; missing neighbours have id -1.

        RDisk kinds fetch k x `refine_k_factor` candidates from the compressed index and re-score them
        exactly with the full vectors.
        """
        k = min(k, self.ntotal)
        if k == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors is None:
            return self.index.search(queries, k)
        _, candidates = self.index.search(queries, min(self.ntotal, k * max(1, self.refine_k_factor)))
        return rescore(queries, candidates, self.vectors, k)

    def templates_at(self, ids: Sequence[int]) -> list[Template]:
        """The templates at these row ids, in order (reads only those rows)."""
        if len(ids) == 0:
            return []
        return Template.from_table(self.table.take(pa.array(np.asarray(ids, dtype=np.int64))))

    def template_ids_at(self, ids: Sequence[int]) -> list[str]:
        return self.table.column("template_id").take(pa.array(np.asarray(ids, dtype=np.int64))).to_pylist()

    def popularity_at(self, ids: Sequence[int]) -> np.ndarray:
        column = self.table.column("popularity").take(pa.array(np.asarray(ids, dtype=np.int64)))
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)

    def vectors_at(self, ids: Sequence[int]) -> np.ndarray | None:
        """The stored vectors of these rows (exact for RDisk kinds, decoded for other compressed kinds); None
        where FAISS cannot decode them."""
        if self.vectors is not None:
            return self.vectors.take(ids)
        decoder = _decoder(self.index)
        if _is_fast_scan(decoder):
            return None
        if not self._direct_map:
            with contextlib.suppress(RuntimeError):  # only IVF kinds need (and have) a direct map
                faiss.extract_index_ivf(decoder).make_direct_map()
            self._direct_map = True
        try:
            return decoder.reconstruct_batch(np.asarray(ids, dtype=np.int64))
        except RuntimeError:
            return None

    # -- persistence --------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        meta = {"kind": self.spec, "embedder": self.embedder_id, "embedder_fingerprint": self.embedder_fingerprint,
                "templates": self.ntotal, "dimension": self.index.d, "duplicates_removed": self.duplicates_removed}
        if self.vectors is not None:
            meta["vectors"] = self.vectors.meta()
        return meta

    def save(self, directory: str | Path) -> None:
        """Write index, templates and metadata into a temporary folder, then rename it into place."""
        with atomic_dir(directory) as tmp:
            self._write(tmp)

    def _write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        if self.templates_file is not None:  # already an Arrow file (a loaded index, a streamed bank)
            link_or_copy(self.templates_file, folder / TEMPLATES_FILE)
        else:
            write_templates(folder / TEMPLATES_FILE, self.table.schema, self.table.to_batches(TEMPLATE_BATCH_ROWS))
        if self.vectors is not None:
            self.vectors.write(folder / VECTORS_DIR)
        (folder / META_FILE).write_text(json.dumps(self.meta(), indent=2))

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None, mmap: bool = True,
             nprobe: int | None = None, ef_search: int | None = None,
             refine_k_factor: int | None = 16) -> TemplateIndex | ShardedTemplateIndex:
        """Load a saved index (one or sharded); refuse it when `embedder` is not the model that built it.

        With `mmap`, FAISS maps the vector codes and Arrow maps the templates (and the full vectors of RDisk
        kinds) instead of reading them in.
        """
        directory = Path(directory)
        meta = _read_meta(directory, embedder)
        if meta["kind"] == "sharded":
            shards = [cls.load(directory / name, embedder, mmap, nprobe, ef_search, refine_k_factor)
                      for name in meta["shards"]]
            return ShardedTemplateIndex(shards)  # type: ignore[arg-type]
        index = _read_faiss(directory / INDEX_FILE, meta["kind"], mmap)
        source = pa.memory_map(str(directory / TEMPLATES_FILE)) if mmap else pa.OSFile(str(directory / TEMPLATES_FILE))
        table = pa.ipc.open_file(source).read_all()
        vectors = None
        if split_spec(meta["kind"])[1]:
            shards = meta["vectors"]
            vectors = VectorShards.open(directory / VECTORS_DIR, shards["shards"], shards["rows_per_shard"], mmap)
        loaded = cls(index, table, meta["embedder"], meta["embedder_fingerprint"], meta["kind"],
                     meta.get("duplicates_removed", 0), vectors, directory / TEMPLATES_FILE if mmap else None)
        loaded.configure(nprobe, ef_search, refine_k_factor)
        return loaded


class ShardedTemplateIndex:
    """Several TemplateIndex shards searched as one bank: per-shard top-k merged by score.

    Row ids are global: shard s holds rows offsets[s] .. offsets[s + 1] - 1. Each shard is a complete
    index folder, so shards can be built, copied and served separately.
    """

    def __init__(self, shards: Sequence[TemplateIndex]):
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        fingerprints = {s.embedder_fingerprint for s in shards}
        if len(fingerprints) > 1:
            raise IndexMismatch(f"shards were built with different embedding models: {sorted(fingerprints)}")
        self.shards = list(shards)
        self.offsets = np.cumsum([0] + [s.ntotal for s in shards])
        self.embedder_id = shards[0].embedder_id
        self.embedder_fingerprint = shards[0].embedder_fingerprint
        self.spec = "sharded"
        self.duplicates_removed = sum(s.duplicates_removed for s in shards)

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    @property
    def templates(self) -> list[Template]:
        return [t for shard in self.shards for t in shard.templates]

    def configure(self, nprobe: int | None = None, ef_search: int | None = None,
                  refine_k_factor: int | None = None) -> None:
        for shard in self.shards:
            shard.configure(nprobe, ef_search, refine_k_factor)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        if k == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        with ThreadPoolExecutor(max_workers=len(self.shards)) as pool:  # FAISS releases the GIL
            results = list(pool.map(lambda s: s.search(vectors, k), self.shards))
        return merge_search_results([(scores, np.where(ids >= 0, ids + offset, -1))
                                     for (scores, ids), offset in zip(results, self.offsets, strict=False)], k)

    def _locate(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        global_ids = np.asarray(ids, dtype=np.int64)
        shard = np.searchsorted(self.offsets, global_ids, side="right") - 1
        return shard, global_ids - self.offsets[shard]

    def _per_shard(self, ids: Sequence[int], fetch: Callable[[TemplateIndex, Any], Any]) -> list[Any] | None:
        """Answer `fetch` per shard for these global ids, in their order (None if any shard answers None)."""
        shard, local = self._locate(ids)
        out: list[Any] = [None] * len(shard)
        for s in np.unique(shard):
            rows = np.flatnonzero(shard == s)
            values = fetch(self.shards[s], local[rows])
            if values is None:
                return None
            for row, value in zip(rows, values, strict=True):
                out[row] = value
        return out

    def templates_at(self, ids: Sequence[int]) -> list[Template]:
        return self._per_shard(ids, TemplateIndex.templates_at) or []

    def template_ids_at(self, ids: Sequence[int]) -> list[str]:
        return self._per_shard(ids, TemplateIndex.template_ids_at) or []

    def popularity_at(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self._per_shard(ids, TemplateIndex.popularity_at) or [], dtype=np.float64)

    def vectors_at(self, ids: Sequence[int]) -> np.ndarray | None:
        rows = self._per_shard(ids, TemplateIndex.vectors_at)
        return None if rows is None else np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def meta(self) -> dict[str, Any]:
        return {"kind": "sharded", "embedder": self.embedder_id, "embedder_fingerprint": self.embedder_fingerprint,
                "templates": self.ntotal, "duplicates_removed": self.duplicates_removed,
                "shards": [f"shard-{i:05d}" for i in range(len(self.shards))],
                "shard_kinds": [s.spec for s in self.shards]}

    def save(self, directory: str | Path) -> None:
        meta = self.meta()
        with atomic_dir(directory) as tmp:
            for name, shard in zip(meta["shards"], self.shards, strict=True):
                shard._write(tmp / name)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))


def write_templates(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Write record batches into the Arrow IPC file an index maps its templates from; return the rows."""
    rows = 0
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def merge_search_results(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, ids) of the same queries into the overall top-k by score."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    ids = np.concatenate([i for _, i in results], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_ids = np.where(np.isfinite(top_scores), top_ids, -1)
    return np.where(np.isfinite(top_scores), top_scores, 0.0).astype(np.float32), top_ids


def unique_templates(templates: Sequence[Template]) -> list[Template]:
    """Templates with distinct ids, the first of each kept, in order."""
    unique: dict[str, Template] = {}
    for template in templates:
        unique.setdefault(template.template_id, template)
    return list(unique.values())


def build_index(templates: Sequence[Template], embedder: Embedder, spec: str = "auto", shards: int = 1,
                train_size: int = 100_000, text: str = DEFAULT_TEMPLATE_TEXT) -> TemplateIndex | ShardedTemplateIndex:
    """Build a one-piece index, or `shards` contiguous shards each indexed with its own `spec`."""
    kept = unique_templates(templates)
    duplicates = len(templates) - len(kept)
    if shards <= 1:
        built: TemplateIndex | ShardedTemplateIndex = TemplateIndex.build(kept, embedder, spec, train_size, text=text)
    else:
        bounds = np.linspace(0, len(kept), shards + 1).round().astype(int)
        built = ShardedTemplateIndex([TemplateIndex.build(kept[a:b], embedder, spec, train_size, text=text)
                                      for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a])
    built.duplicates_removed = duplicates
    return built
