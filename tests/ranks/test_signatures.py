"""Pair dedup on signatures: exact and near duplicates found across ranks, the first pair of a group kept."""

from __future__ import annotations

import numpy as np

from fineinstructions.ranks.signatures import (
    band_layout,
    column_edges,
    duplicates,
    pack_row,
    partition_mask,
    row_rank,
    signature_columns,
    signatures,
)
from fineinstructions.records import Pair

TEXT = ("Acids donate protons to bases in water, and the strength of an acid is measured by how completely it "
        "gives up its proton; strong acids dissociate fully while weak acids reach an equilibrium.")


def pair(document: str, instruction: str, answer: str) -> Pair:
    return Pair(document_id=document, template_id="t", text="x", template="t", instantiated_instruction=instruction,
                answer=answer, excerpt_coverage=1.0, judge_score=5, token_count=100, synthetic_token_count=10)


def test_rows_sort_by_rank_then_shard_then_position():
    rows = [pack_row(1, 0, 0), pack_row(0, 2, 5), pack_row(0, 2, 4), pack_row(0, 0, 9)]
    assert sorted(rows) == [pack_row(0, 0, 9), pack_row(0, 2, 4), pack_row(0, 2, 5), pack_row(1, 0, 0)]
    assert row_rank(np.array(rows)).tolist() == [1, 0, 0, 0]


def test_bands_put_the_collision_curve_near_the_threshold():
    bands, rows = band_layout(0.8)
    assert bands * rows == 64
    assert abs((1 - 0.5 ** (1 / bands)) ** (1 / rows) - 0.8) < 0.1
    assert band_layout(None) == (0, 0)


def test_exact_and_near_duplicates_across_ranks_keep_the_first():
    original = pair("a", "What do acids do?", TEXT)
    exact = pair("b", "what do ACIDS do", TEXT + " ")  # same once case, spacing and punctuation are normalised
    near = pair("c", "What do acids do?", TEXT.replace("completely", "fully"))
    other = pair("d", "What is Denmark?", "Denmark is a Nordic country in Northern Europe, south of Norway.")
    first = signatures([original, other], rank=1, shard=0, threshold=0.8)
    second = signatures([exact, near], rank=0, shard=3, threshold=0.8)  # rank 0 comes first in the dataset
    edges = [column_edges(lambda cols: [first.select(cols), second.select(cols)], column, 0.8)
             for column in signature_columns(0.8)]
    removed = duplicates(edges).to_pylist()
    keep = pack_row(0, 3, 0)  # the exact twin in rank 0 is the first of the group
    assert {r["row"]: (r["duplicate_of"], r["reason"]) for r in removed} == {
        pack_row(0, 3, 1): (keep, "near_duplicate_pair"),
        pack_row(1, 0, 0): (keep, "duplicate_pair"),
    }


def test_a_band_collision_below_the_threshold_is_not_a_duplicate():
    one = pair("a", "What do acids do?", TEXT)
    other = pair("b", "What do acids do?", "Acids donate protons to bases in water. " + "Unrelated words follow " * 8)
    table = signatures([one, other], rank=0, shard=0, threshold=0.8)
    assert all(column_edges(lambda cols: [table.select(cols)], c, 0.8).num_rows == 0
               for c in signature_columns(0.8)[1:])


def test_partitions_split_the_hash_space_without_overlap():
    hashes = np.random.default_rng(0).integers(0, 2**63, 10_000, dtype=np.uint64) * np.uint64(2)
    masks = [partition_mask(hashes, p, 4) for p in range(4)]
    assert (np.sum(masks, axis=0) == 1).all() and all(m.sum() > 2000 for m in masks)
