"""Pair deduplication across ranks on compact signatures: exact hashes and MinHash LSH bands.

Each rank writes, per filter shard, one small signature row per kept pair: its position (`row`: rank,
shard and place in the shard packed in 64 bits, so ordering rows orders pairs as one sequential run would
meet them), a 64-bit hash of its normalised instruction and answer, and one 64-bit hash per MinHash band.
A dedup task takes one column (the exact hash or one band) and one hash range of every rank's signatures,
sorts them, and emits an edge from the first pair of every run of equal hashes to each other member. The
edges of all tasks (as many as there are duplicates, not pairs) are joined by union-find; in each group the
first pair stays and the rest leave the dataset. This is datatrove's MinHash recipe (memory per task is its
share of one column), with one check more: a band collision counts only when the two pairs' full MinHash
signatures (also in the signature rows, 256 bytes a pair) estimate a Jaccard similarity of at least the
threshold. With `b` bands of `r` rows, two pairs of shingle Jaccard `s` collide with probability
1 - (1 - s^r)^b; the bands are chosen so that this is 1/2 near the threshold, and the check removes the
collisions below it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import numpy as np
import pyarrow as pa
import xxhash

from fineinstructions.records import Pair
from fineinstructions.stages.pair_dedup import pair_key, pair_text
from fineinstructions.text.dedup import shingles

NUM_PERM = 64
RANK_BITS, SHARD_BITS, POSITION_BITS = 20, 23, 20  # 2^20 ranks, 2^23 shards per rank, 2^20 pairs per shard
EXACT = "exact"
MINHASH = "minhash"


def pack_row(rank: int, shard: int, position: int) -> int:
    """A pair's place in the run as one sortable int64: rank, then shard, then position in the shard."""
    if rank >= 1 << RANK_BITS or shard >= 1 << SHARD_BITS or position >= 1 << POSITION_BITS:
        raise ValueError(f"rank {rank}, shard {shard}, position {position} exceed the signature's row layout")
    return (rank << (SHARD_BITS + POSITION_BITS)) | (shard << POSITION_BITS) | position


def row_rank(rows: np.ndarray) -> np.ndarray:
    return rows >> (SHARD_BITS + POSITION_BITS)


@cache
def band_layout(threshold: float | None, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) whose collision S-curve is 1/2 closest to `threshold` ((0, 0): exact only)."""
    if not threshold:
        return 0, 0
    best = min(((b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0),
               key=lambda br: abs((1 - 0.5 ** (1 / br[0])) ** (1 / br[1]) - threshold))
    return best


def signature_columns(threshold: float | None) -> list[str]:
    """The hash columns of a signature file: the exact hash, then one per band."""
    bands, _ = band_layout(threshold)
    return [EXACT, *(f"band_{b}" for b in range(bands))]


def signatures(pairs: Sequence[Pair], rank: int, shard: int, threshold: float | None) -> pa.Table:
    """The signature rows of one filter shard's kept pairs."""
    bands, rows_per_band = band_layout(threshold)
    columns: dict[str, list[int]] = {name: [] for name in signature_columns(threshold)}
    minhashes = np.zeros((len(pairs), NUM_PERM if bands else 0), dtype=np.uint32)
    for i, pair in enumerate(pairs):
        columns[EXACT].append(xxhash.xxh64_intdigest(pair_key(pair).encode()))
        if bands:
            minhashes[i] = minhash(shingles(pair_text(pair)))
            for b in range(bands):
                columns[f"band_{b}"].append(
                    xxhash.xxh64_intdigest(minhashes[i, b * rows_per_band : (b + 1) * rows_per_band].tobytes()))
    rows = [pack_row(rank, shard, position) for position in range(len(pairs))]
    table = pa.table({"row": pa.array(rows, pa.int64()),
                      **{name: pa.array(values, pa.uint64()) for name, values in columns.items()}})
    if bands:
        flat = pa.array(minhashes.reshape(-1), pa.uint32())
        table = table.append_column(MINHASH, pa.FixedSizeListArray.from_arrays(flat, NUM_PERM))
    return table


_MERSENNE = np.uint64((1 << 61) - 1)
_PERMUTATIONS = np.random.default_rng(1).integers(1, (1 << 61) - 1, size=(2, NUM_PERM), dtype=np.uint64)


def minhash(items: Iterable[str]) -> np.ndarray:
    """The MinHash signature (NUM_PERM uint32 values) of a set of strings: for each of NUM_PERM universal hash
    functions ((a * h + b) mod 2^61 - 1, h a 32-bit xxhash of the item), the minimum over the items. Vectorised
    (one numpy pass per text), which is what makes signatures cheap enough for every kept pair."""
    hashes = np.fromiter((xxhash.xxh32_intdigest(item.encode("utf-8")) for item in items), dtype=np.uint64)
    if len(hashes) == 0:
        return np.full(NUM_PERM, np.iinfo(np.uint32).max, dtype=np.uint32)
    a, b = _PERMUTATIONS
    with np.errstate(over="ignore"):  # uint64 products wrap, as the hash family intends
        values = (np.outer(hashes, a) + b) % _MERSENNE
    return (values.min(axis=0) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def similar(first: np.ndarray, other: np.ndarray, threshold: float) -> np.ndarray:
    """Which candidate pairs' MinHash signatures (rows of `first` and `other`) estimate Jaccard >= threshold."""
    if len(first) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray((first == other).mean(axis=1) >= threshold)


def duplicate_edges(hashes: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, other) index pairs into `rows`: within every run of equal hashes, the earliest row (by position)
    to each other member."""
    if len(hashes) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((rows, hashes))
    sorted_hashes = hashes[order]
    starts = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
    run_first = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
    others = run_first != order
    return run_first[others], order[others]


def column_edges(read: Callable[[list[str]], Iterable[pa.Table]], column: str, threshold: float | None,
                 partition: int = 0, partitions: int = 1) -> pa.Table:
    """The duplicate edges (first row, other row, exact?) within one signature column and hash range of the
    signature tables `read(columns)` yields; for a band, only the collisions whose MinHash estimate reaches
    `threshold`. Memory holds the range's hashes and rows (16 bytes a pair), and full signatures only for the
    rows that collide (a second read)."""
    hashes, rows = [], []
    for table in read(["row", column]):
        values = table.column(column).to_numpy().astype(np.uint64)
        mask = partition_mask(values, partition, partitions)
        hashes.append(values[mask])
        rows.append(table.column("row").to_numpy()[mask])
    all_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    first, other = duplicate_edges(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64), all_rows)
    first, other = all_rows[first], all_rows[other]
    if column != EXACT and threshold is not None and len(first):
        wanted = np.unique(np.concatenate([first, other]))
        found: dict[int, np.ndarray] = {}
        for table in read(["row", MINHASH]):
            table_rows = table.column("row").to_numpy()
            hit = np.flatnonzero(np.isin(table_rows, wanted))
            if len(hit):
                flat = table.column(MINHASH).combine_chunks().flatten().to_numpy().reshape(-1, NUM_PERM)
                found.update(zip(table_rows[hit].tolist(), flat[hit], strict=True))
        keep = similar(np.stack([found[r] for r in first.tolist()]), np.stack([found[r] for r in other.tolist()]),
                       threshold)
        first, other = first[keep], other[keep]
    return pa.table({"first": pa.array(first, pa.int64()), "other": pa.array(other, pa.int64()),
                     "exact": pa.array(np.full(len(first), column == EXACT))})


def partition_mask(hashes: np.ndarray, partition: int, partitions: int) -> np.ndarray:
    """Which hashes fall in `partition` of `partitions` equal hash ranges (by the top bits)."""
    if partitions <= 1:
        return np.ones(len(hashes), dtype=bool)
    return (hashes // np.uint64(math.ceil(2**64 / partitions))).astype(np.int64) == partition


def duplicates(edge_tables: Iterable[pa.Table]) -> pa.Table:
    """Union-find over the (first, other, exact?) edges of `column_edges`: every row that is not the first of its
    group, with the group's first row and whether it repeats a pair exactly ("duplicate_pair") or nearly."""
    parent: dict[int, int] = {}
    exact_rows: set[int] = set()

    def find(row: int) -> int:
        root = row
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(row, row) != root:  # path compression
            parent[row], row = root, parent[row]
        return root

    for edges in edge_tables:
        columns = [edges.column(name).to_pylist() for name in ("first", "other", "exact")]
        for a, b, is_exact in zip(*columns, strict=True):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the earliest row stays the group's root
            if is_exact:
                exact_rows.add(b)
    removed = sorted(row for row in parent if find(row) != row)
    return pa.table({
        "row": pa.array(removed, pa.int64()),
        "duplicate_of": pa.array([find(row) for row in removed], pa.int64()),
        "reason": pa.array(["duplicate_pair" if row in exact_rows else "near_duplicate_pair" for row in removed],
                           pa.string()),
    })
