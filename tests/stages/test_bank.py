"""Streaming bank builds: Arrow batches in, the same index as `TemplateIndex.build` out, deduplicated by id,
resumable after a kill, and re-scored with the full vectors on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fineinstructions.backends.embeddings import HashingEmbedder, make_embedder
from fineinstructions.records import Template
from fineinstructions.stages import bank as bank_module
from fineinstructions.stages.bank import SeenHashes, build_bank_index, hash_ids
from fineinstructions.stages.index import TemplateIndex, TemplateIndexError, embedded_text

TOPICS = 40


def descriptions(n: int, seed: int = 0) -> list[str]:
    """Synthetic descriptions: each mostly words of one of TOPICS topics, so the bank has clusters."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, TOPICS, n)
    own = rng.integers(0, 25, (n, 6))
    shared = rng.integers(0, 400, (n, 3))
    return [" ".join([f"t{t}w{w}" for w in own[i]] + [f"g{w}" for w in shared[i]]) for i, t in enumerate(topic)]


def templates(n: int, seed: int = 0) -> list[Template]:
    return [Template(template_id=f"id{i}", template=f"Question {i} about <fi>topic</fi>?",
                     compatible_document_description=text, popularity=1 + i % 3)
            for i, text in enumerate(descriptions(n, seed))]


def batches(records: Sequence[Template], size: int = 700) -> list[pa.RecordBatch]:
    return Template.to_table(list(records)).to_batches(max_chunksize=size)


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder that counts the texts it encodes."""

    def __init__(self, dimension: int = 64):
        super().__init__(dimension, model=f"hashing-sim:{dimension}")
        self.encoded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded += len(texts)
        return super().encode(texts)


def test_streamed_flat_bank_searches_like_the_in_memory_build(tmp_path):
    embedder = make_embedder("hashing-sim:64")
    records = templates(3000)
    meta = build_bank_index(batches(records), embedder, tmp_path / "bank", spec="Flat", shard_rows=1024)
    assert meta["kind"] == "Flat" and meta["templates"] == 3000 and meta["duplicates_removed"] == 0
    streamed = TemplateIndex.load(tmp_path / "bank", embedder)
    built = TemplateIndex.build(records, embedder, "Flat")
    queries = embedder.encode(descriptions(100, seed=7))
    (stream_scores, stream_ids), (scores, ids) = streamed.search(queries, 6), built.search(queries, 6)
    assert np.allclose(stream_scores, scores, atol=2e-3)  # float16 shards vs float32 vectors
    gaps = -np.diff(scores, axis=1)
    clear = np.minimum(gaps, np.pad(gaps, ((0, 0), (1, 0)), constant_values=1)[:, :-1]) > 4e-3  # ranks 0..4
    assert clear.sum() > 100  # ranks whose scores stand apart by more than float16 rounding: the same ids
    assert np.array_equal(stream_ids[:, :5][clear], ids[:, :5][clear])
    assert [t.template_id for t in streamed.templates_at([0, 2999])] == ["id0", "id2999"]
    assert streamed.templates_at([5])[0] == records[5]
    assert not (tmp_path / ".bank.building").exists()


def test_ids_are_deduplicated_first_kept_unless_told_not_to(tmp_path):
    embedder = make_embedder("hashing-sim:64")
    records = templates(1200)
    repeated = [r.model_copy(update={"compatible_document_description": "another text"}) for r in records[:300]]
    stream = batches(records[:600]) + batches(repeated + records[600:], size=250)
    meta = build_bank_index(stream, embedder, tmp_path / "dedup", spec="Flat", shard_rows=500)
    assert meta["templates"] == 1200 and meta["duplicates_removed"] == 300
    index = TemplateIndex.load(tmp_path / "dedup")
    assert index.template_ids_at(list(range(1200))) == [r.template_id for r in records]
    assert index.templates_at([0])[0].compatible_document_description == records[0].compatible_document_description

    meta = build_bank_index(stream, embedder, tmp_path / "kept", spec="Flat", deduplicate=False, shard_rows=500)
    assert meta["templates"] == 1500 and meta["duplicates_removed"] == 0


def test_id_hashes_are_those_of_the_strings_and_the_seen_set_spans_batches():
    ids = pa.array(["a", "bb", "", "a", "ccc"]).slice(1)
    assert len(set(hash_ids(ids).tolist())) == 4 and hash_ids(ids)[2] == hash_ids(pa.array(["a"]))[0]
    seen = SeenHashes()
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5000, 20_000).astype(np.uint64)
    kept = np.concatenate([seen.first_seen(part) for part in np.array_split(values, 37)])
    _, first = np.unique(values, return_index=True)
    assert np.array_equal(np.flatnonzero(kept), np.sort(first)) and len(seen) == len(first)
    assert len(seen.runs) <= 16


def test_missing_optional_columns_take_their_defaults_and_ids_are_required(tmp_path):
    embedder = make_embedder("hashing-sim:64")
    table = pa.table({"template_id": ["x", "y"], "template": ["A <fi>b</fi>?", "C?"],
                      "compatible_document_description": ["a text about cats", "a text about cars"]})
    build_bank_index([table], embedder, tmp_path / "bare", spec="Flat")
    loaded = TemplateIndex.load(tmp_path / "bare")
    assert loaded.templates_at([1])[0] == Template(template_id="y", template="C?",
                                                   compatible_document_description="a text about cars")
    with pytest.raises(TemplateIndexError, match="template_id"):
        build_bank_index([table.drop_columns(["template_id"])], embedder, tmp_path / "bad", spec="Flat")


def test_a_killed_build_resumes_from_its_shards_and_gives_the_same_index(tmp_path, monkeypatch):
    records = templates(4000)
    fresh = CountingEmbedder()
    build_bank_index(batches(records), fresh, tmp_path / "fresh", spec="IVF16,PQ16x4fs,RDisk", shard_rows=1000)
    assert fresh.encoded == 4000

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the build dies after embedding, before the index is saved

    embedder = CountingEmbedder()
    monkeypatch.setattr(bank_module, "faiss_index_from_shards", killed)
    with pytest.raises(KeyboardInterrupt):
        build_bank_index(batches(records), embedder, tmp_path / "idx", spec="IVF16,PQ16x4fs,RDisk", shard_rows=1000)
    monkeypatch.undo()
    work = tmp_path / ".idx.building" / "vectors"
    assert sorted(p.name for p in work.glob("*.npy")) == [f"shard-0000{i}.npy" for i in range(4)]
    assert not (tmp_path / "idx").exists()
    (work / "shard-00002.npy").unlink()  # killed while writing shard 2 ...
    (work / ".shard-00002.npy.tmp-999999999").write_bytes(b"half a shard")  # ... whose temporary stayed
    embedder.encoded = 0
    meta = build_bank_index(batches(records), embedder, tmp_path / "idx", spec="IVF16,PQ16x4fs,RDisk",
                            shard_rows=1000)
    assert embedder.encoded == 1000  # only the missing shard was embedded again
    assert meta == json.loads((tmp_path / "fresh" / "index.json").read_text())
    assert not (tmp_path / ".idx.building").exists()
    for i in range(4):
        name = f"shard-0000{i}.npy"
        assert np.array_equal(np.load(tmp_path / "idx" / "vectors" / name),
                              np.load(tmp_path / "fresh" / "vectors" / name))
    resumed, again = TemplateIndex.load(tmp_path / "idx"), TemplateIndex.load(tmp_path / "fresh")
    queries = fresh.encode(descriptions(50, seed=3))
    resumed.configure(nprobe=4)
    again.configure(nprobe=4)
    assert np.array_equal(resumed.search(queries, 5)[1], again.search(queries, 5)[1])


def test_a_shard_of_other_descriptions_is_embedded_again(tmp_path, monkeypatch):
    monkeypatch.setattr(bank_module, "faiss_index_from_shards", lambda *a, **k: (_ for _ in ()).throw(OSError))
    embedder = CountingEmbedder()
    with pytest.raises(OSError):
        build_bank_index(batches(templates(2000)), embedder, tmp_path / "idx", spec="Flat", shard_rows=1000)
    monkeypatch.undo()
    changed = templates(2000)
    changed[1500] = changed[1500].model_copy(update={"compatible_document_description": "something else"})
    embedder.encoded = 0
    build_bank_index(batches(changed), embedder, tmp_path / "idx", spec="Flat", shard_rows=1000)
    assert embedder.encoded == 1000  # shard 0 kept, shard 1 (row 1500 changed) embedded again
    index = TemplateIndex.load(tmp_path / "idx")
    text = embedded_text(changed[1500].template, "something else")  # the default text: template and description
    assert np.allclose(index.vectors_at([1500]), embedder.encode([text]), atol=1e-2)


def test_parallel_workers_write_the_same_shards(tmp_path):
    records = templates(3000)
    embedder = make_embedder("hashing-sim:64")
    one = build_bank_index(batches(records), embedder, tmp_path / "one", spec="IVF8,PQ16x4fs,RDisk", shard_rows=1000)
    two = build_bank_index(batches(records), embedder, tmp_path / "two", spec="IVF8,PQ16x4fs,RDisk", shard_rows=1000,
                           workers=2)
    assert one == two
    for i in range(3):
        name = Path("vectors") / f"shard-0000{i}.npy"
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name))


def test_re_scoring_from_disk_recalls_more_than_the_compressed_index_alone(tmp_path):
    embedder = make_embedder("hashing-sim:64")
    records = templates(20_000)
    results = {}
    queries = embedder.encode(descriptions(200, seed=11))
    for spec in ("IVF64,PQ16x4fs", "IVF64,PQ16x4fs,RDisk"):
        build_bank_index(batches(records, 5000), embedder, tmp_path / spec, spec=spec, train_size=20_000,
                         shard_rows=8192, text="description")  # the exact scores below are of descriptions
        index = TemplateIndex.load(tmp_path / spec, embedder, nprobe=16, refine_k_factor=16)
        results[spec] = index.search(queries, 10)
    assert sorted(os.listdir(tmp_path / "IVF64,PQ16x4fs,RDisk" / "vectors")) == [
        "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    assert not (tmp_path / "IVF64,PQ16x4fs" / "vectors").exists()
    exact = queries @ embedder.encode([r.compatible_document_description for r in records]).T
    tenth = -np.partition(-exact, 9, axis=1)[:, 9:10]

    def recall(ids: np.ndarray) -> float:
        """The share of returned templates that belong in the exact top 10 (ties with the 10th count)."""
        return float(np.mean(np.take_along_axis(exact, ids, axis=1) >= tenth - 2e-3))

    plain, rescored = recall(results["IVF64,PQ16x4fs"][1]), recall(results["IVF64,PQ16x4fs,RDisk"][1])
    assert rescored >= plain + 0.2 and rescored > 0.75  # hashed bags of words are hard on 4-bit PQ codes
    scores = results["IVF64,PQ16x4fs,RDisk"][0]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # exact scores, best first
    top = results["IVF64,PQ16x4fs,RDisk"][1][:, 0]
    assert np.allclose(scores[:, 0], exact[np.arange(len(top)), top], atol=2e-3)
