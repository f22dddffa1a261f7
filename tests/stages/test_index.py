"""Template indexes: every FAISS kind builds, saves, memory-maps and searches; shards merge like one index."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from fineinstructions.records import Template
from fineinstructions.stages.index import (
    IndexMismatch,
    ShardedTemplateIndex,
    TemplateIndex,
    TemplateIndexError,
    build_index,
    merge_search_results,
    resolve_spec,
)

DIM = 32


def bank(n: int, seed: int = 0) -> tuple[np.ndarray, pa.Table]:
    """Clustered unit vectors (like template embeddings: many near neighbours) and their template rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    templates = [Template(template_id=f"t{i}", template=f"What is <fi>thing {i}</fi>?",
                          compatible_document_description=f"description {i}", popularity=1 + i % 5)
                 for i in range(n)]
    return vectors, Template.to_table(templates)


def test_auto_is_exact_for_small_banks_then_fast_scan_with_re_scoring():
    assert resolve_spec("auto", 50_000, 384) == "Flat"
    assert resolve_spec("auto", 1_000_000, 384) == "IVF4096,PQ32x4fs,RFlat"
    assert resolve_spec("auto", 18_000_000, 384) == "IVF4096,PQ32x4fs,RDisk"  # full vectors memory-mapped
    assert resolve_spec("auto", 200_000, 768) == "IVF2048,PQ64x4fs,RFlat"
    assert resolve_spec("HNSW32", 10, 384) == "HNSW32"


def test_a_bad_factory_string_is_a_clear_error():
    vectors, table = bank(50)
    with pytest.raises(TemplateIndexError, match="not a FAISS index factory string"):
        TemplateIndex.from_vectors(vectors, table, "m", "f" * 16, "NotAnIndex12")
    with pytest.raises(TemplateIndexError, match="follows a compressed kind"):
        TemplateIndex.from_vectors(vectors, table, "m", "f" * 16, "RDisk")


@pytest.mark.parametrize("spec,recall_floor", [("Flat", 1.0), ("IVF8,Flat", 0.95), ("IVF8,PQ16", 0.5),
                                               ("HNSW16", 0.95), ("IVF8,PQ16x4fs", 0.15),
                                               ("IVF8,PQ16x4fs,RFlat", 0.95), ("IVF8,PQ16x4fs,RDisk", 0.95)])
def test_every_kind_round_trips_memory_mapped_and_finds_neighbours(spec, recall_floor, tmp_path):
    vectors, table = bank(3000)
    index = TemplateIndex.from_vectors(vectors, table, "model", "f" * 16, spec, train_size=3000)
    index.configure(nprobe=8, ef_search=64, refine_k_factor=16)
    queries = vectors[:50] + 0.05 * np.random.default_rng(1).normal(size=(50, DIM)).astype(np.float32)
    scores, ids = index.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert recall >= recall_floor
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first

    index.save(tmp_path / "idx")
    loaded = TemplateIndex.load(tmp_path / "idx", mmap=True, nprobe=8, ef_search=64, refine_k_factor=16)
    assert loaded.spec == spec and loaded.ntotal == 3000
    again_scores, again_ids = loaded.search(queries, 10)
    assert np.array_equal(again_ids, ids) and np.allclose(again_scores, scores, atol=1e-5)
    assert (tmp_path / "idx" / "vectors").is_dir() == spec.endswith("RDisk")
    assert [t.template_id for t in loaded.templates_at([5, 0, 2999])] == ["t5", "t0", "t2999"]
    assert loaded.template_ids_at([7]) == ["t7"] and loaded.popularity_at([7]).tolist() == [3.0]
    decoded = loaded.vectors_at([0, 1])
    if spec.endswith("fs"):
        assert decoded is None  # FAISS cannot decode fast-scan codes of a loaded index
    else:
        assert decoded.shape == (2, DIM) and float(decoded[0] @ vectors[0]) > 0.8
    if spec.endswith("RDisk"):
        assert np.allclose(decoded, vectors[:2], atol=1e-3)  # the full (float16) vectors, not decoded codes


def test_disk_re_scoring_is_exact_over_its_candidates_and_survives_a_second_save(tmp_path):
    vectors, table = bank(5000, seed=2)
    index = TemplateIndex.from_vectors(vectors, table, "model", "f" * 16, "IVF16,PQ8x4fs,RDisk", train_size=5000)
    plain = TemplateIndex.from_vectors(vectors, table, "model", "f" * 16, "IVF16,PQ8x4fs", train_size=5000)
    for i in (index, plain):
        i.configure(nprobe=16, refine_k_factor=50)
    queries = vectors[:100] + 0.1 * np.random.default_rng(3).normal(size=(100, DIM)).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = {name: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.search(queries, 10)[1], exact, strict=True)])
              for name, i in (("rescored", index), ("plain", plain))}
    assert recall["rescored"] > 0.97 and recall["rescored"] > recall["plain"]
    scores, ids = index.search(queries, 10)
    assert np.allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[ids]), atol=2e-3)  # exact scores

    index.save(tmp_path / "one")
    loaded = TemplateIndex.load(tmp_path / "one", nprobe=16, refine_k_factor=50)
    assert isinstance(loaded, TemplateIndex) and loaded.vectors is not None and loaded.vectors.folder is not None
    loaded.save(tmp_path / "two")  # the shards and templates are linked or copied from the mapped files
    loaded.save(tmp_path / "one")  # over the folder it is mapped from
    for folder in ("one", "two"):
        again = TemplateIndex.load(tmp_path / folder, nprobe=16, refine_k_factor=50)
        assert np.array_equal(again.search(queries, 10)[1], ids)
        assert json.loads((tmp_path / folder / "index.json").read_text())["vectors"]["shards"] == 1


def test_in_memory_build_of_a_disk_re_scored_kind(tmp_path):
    from fineinstructions.backends.embeddings import make_embedder

    embedder = make_embedder("hashing-sim:32")
    templates = [Template(template_id=f"t{i}", template="Q?",
                          compatible_document_description=f"topic {i % 50} text {i}") for i in range(2000)]
    built = build_index(templates, embedder, "IVF8,PQ8x4fs,RDisk", train_size=2000)
    assert isinstance(built, TemplateIndex) and built.vectors is not None and built.vectors.ntotal == 2000
    built.configure(nprobe=8)
    query = embedder.encode(["topic 7 text 1207"])
    assert built.templates_at(built.search(query, 1)[1][0])[0].template_id == "t1207"
    built.save(tmp_path / "idx")
    assert TemplateIndex.load(tmp_path / "idx", embedder).search(query, 1)[1][0][0] == 1207


def test_shards_merge_to_the_same_answer_as_one_exact_index(tmp_path):
    vectors, table = bank(1000)
    whole = TemplateIndex.from_vectors(vectors, table, "model", "f" * 16, "Flat")
    shards = ShardedTemplateIndex([
        TemplateIndex.from_vectors(vectors[a:b], table.slice(a, b - a), "model", "f" * 16, "Flat")
        for a, b in ((0, 300), (300, 700), (700, 1000))])
    queries = vectors[::97]
    assert np.array_equal(shards.search(queries, 7)[1], whole.search(queries, 7)[1])
    assert [t.template_id for t in shards.templates_at([999, 0, 300, 299])] == ["t999", "t0", "t300", "t299"]
    assert np.allclose(shards.vectors_at([650]), vectors[650:651], atol=1e-6)

    shards.save(tmp_path / "sharded")
    meta = json.loads((tmp_path / "sharded" / "index.json").read_text())
    assert meta["kind"] == "sharded" and len(meta["shards"]) == 3
    loaded = TemplateIndex.load(tmp_path / "sharded")
    assert isinstance(loaded, ShardedTemplateIndex) and loaded.ntotal == 1000
    assert np.array_equal(loaded.search(queries, 7)[1], whole.search(queries, 7)[1])


def test_merge_puts_missing_neighbours_last():
    a = (np.array([[0.9, 0.1]], np.float32), np.array([[3, -1]]))
    b = (np.array([[0.5, 0.4]], np.float32), np.array([[10, 11]]))
    scores, ids = merge_search_results([a, b], 3)
    assert ids.tolist() == [[3, 10, 11]] and scores[0, 0] == pytest.approx(0.9)
    scores, ids = merge_search_results([a], 2)
    assert ids.tolist() == [[3, -1]]


def test_real_templates_build_sharded_and_a_foreign_model_is_refused(embedder, tmp_path):
    templates = [Template(template_id=f"t{i}", template=f"Question {i} about <fi>topic</fi>?",
                          compatible_document_description=text)
                 for i, text in enumerate(["A recipe for a baked dessert.", "A biography of a painter.",
                                           "A guide to repairing a bicycle.", "A history of a medieval city.",
                                           "A recipe for a baked dessert."])]
    sharded = build_index(templates + templates[:1], embedder, "Flat", shards=2)
    assert isinstance(sharded, ShardedTemplateIndex) and sharded.ntotal == 5 and sharded.duplicates_removed == 1
    query = embedder.encode(["How to fix a flat tyre on a bike"])
    assert sharded.templates_at(sharded.search(query, 1)[1][0])[0].template_id == "t2"
    sharded.save(tmp_path / "idx")
    meta_path = tmp_path / "idx" / "shard-00001" / "index.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"embedder_fingerprint": "0" * 16}))
    with pytest.raises(IndexMismatch):
        TemplateIndex.load(tmp_path / "idx", embedder)
