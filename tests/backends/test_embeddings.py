from __future__ import annotations

import numpy as np

from fineinstructions.backends.embeddings import coverage_pool


def test_coverage_pool_shapes_and_unit_norm():
    tokens = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    pooled = coverage_pool(tokens, chunks=10, sigma=0.05, alpha=1.0)
    assert pooled.shape == (11, 8)
    assert np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert np.allclose(pooled[0], tokens.mean(0) / np.linalg.norm(tokens.mean(0)), atol=1e-5)


def test_local_vectors_follow_their_part_of_the_document():
    first, second = np.eye(4)[0], np.eye(4)[1]
    tokens = np.stack([first] * 50 + [second] * 50).astype(np.float32)
    pooled = coverage_pool(tokens, chunks=2, sigma=0.05, alpha=1.0)
    assert pooled[1] @ first > 0.99 and pooled[2] @ second > 0.99


def test_alpha_zero_gives_the_global_vector_everywhere():
    tokens = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    pooled = coverage_pool(tokens, chunks=3, sigma=0.1, alpha=0.0)
    assert np.allclose(pooled[1:], pooled[0], atol=1e-6)


def test_real_embedder_one_pass_gives_global_plus_local(embedder):
    texts = ["Paris is the capital of France. " * 5 + "Bananas are yellow fruit. " * 5, "short text"]
    pooled = embedder.encode_with_coverage(texts, chunks=4)
    assert [p.shape for p in pooled] == [(5, embedder.dimension)] * 2
    plain = embedder.encode(texts)
    assert float(plain[0] @ pooled[0][0]) > 0.99  # the global row is the usual mean-pooled embedding
    france, banana = embedder.encode(["the capital of France", "yellow fruit"])
    assert pooled[0][1] @ france > pooled[0][1] @ banana  # early chunk is about France
    assert pooled[0][4] @ banana > pooled[0][4] @ france  # late chunk is about bananas


def test_long_text_is_cut_into_windows_on_one_position_axis(embedder):
    text = "The quick brown fox jumps over the lazy dog. " * 120  # ~1,300 tokens
    windows = embedder.token_windows([text])
    limit = embedder.model.max_seq_length
    n_tokens = len(embedder.model.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(windows) == -(-n_tokens // embedder.window_tokens)
    assert all(len(w.ids) <= limit and len(w.ids) == len(w.positions) for w in windows)
    positions = np.concatenate([w.positions for w in windows])
    assert positions.min() == 0.0 and positions.max() == 1.0 and np.all(np.diff(positions) >= 0)
    capped = embedder.token_windows([text], max_windows=3)
    assert len(capped) == 3 and capped[0].positions[0] == 0.0 and capped[-1].positions[-1] == 1.0


def test_single_window_global_row_equals_the_plain_embedding(embedder):
    texts = ["Acid rain is rain that is unusually acidic, caused by sulfur dioxide emissions.", ""]
    pooled = embedder.encode_with_coverage(texts, chunks=3)
    assert float(pooled[0][0] @ embedder.encode(texts[:1])[0]) > 0.9999
    assert pooled[1].shape == (4, embedder.dimension) and np.all(np.isfinite(pooled[1]))


def test_the_end_of_a_document_past_the_window_still_counts(embedder):
    rain = "Acid rain is caused by sulfur dioxide and nitrogen oxide emissions reacting with water. " * 20
    jazz = "Jazz music originated in New Orleans with improvisation, swing and blue notes. " * 20
    pooled = embedder.encode_with_coverage([rain + jazz], chunks=10)[0]
    truncated = embedder.encode([rain + jazz])[0]  # the plain pass stops at the model's window
    about_jazz = embedder.encode(["a text about jazz music"])[0]
    assert float(pooled[10] @ about_jazz) > float(truncated @ about_jazz) + 0.2


def test_hashing_embedder_is_deterministic_unit_length_and_topical():
    from fineinstructions.backends.embeddings import HashingEmbedder, hash_strings, make_embedder

    embedder = make_embedder("hashing-sim")
    assert isinstance(embedder, HashingEmbedder) and embedder.dimension == 384
    texts = ["A recipe for a baked chocolate dessert.", "A recipe for baking a chocolate cake dessert",
             "A biography of a Dutch painter.", "", "!!! ???"]
    vectors = embedder.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, HashingEmbedder(384).encode(texts))  # a fresh instance: the same vectors
    assert np.array_equal(vectors[:1], embedder.encode(texts[:1]))  # independent of the batch
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3  # shared words bring texts together
    assert np.allclose(vectors[3], vectors[4])  # no words: the same "empty" vector
    assert HashingEmbedder(384).fingerprint == embedder.fingerprint != make_embedder("hashing-sim:128").fingerprint
    assert hash_strings(["ab", "ba", "ab"]).tolist()[0] == hash_strings(["ab"]).tolist()[0] != hash_strings(["ba"])[0]


def test_hashing_embedder_is_pinned_across_processes_and_versions():
    """The vectors of a saved bank must not change under it: pin a few values."""
    from fineinstructions.backends.embeddings import make_embedder

    vector = make_embedder("hashing-sim:16").encode(["Hello world, hello again"])[0]
    assert np.flatnonzero(vector).tolist() == PINNED_BUCKETS
    assert np.allclose(vector[PINNED_BUCKETS], PINNED_VALUES, atol=1e-6)


PINNED_BUCKETS = [0, 10, 11, 12]
PINNED_VALUES = [-0.696311, 0.348155, 0.348155, 0.522233]


def test_hashing_embedder_pools_coverage_through_the_shared_code_path():
    from fineinstructions.backends.embeddings import make_embedder

    embedder = make_embedder("hashing-sim:256")
    cooking = "bake the bread dough in a hot oven until golden " * 20
    sailing = "the sailing boat crossed the windy harbour at dawn " * 20
    pooled = embedder.encode_with_coverage([cooking + sailing, "short text", ""], chunks=4)
    assert [p.shape for p in pooled] == [(5, 256)] * 3
    assert np.allclose(pooled[1][0], embedder.encode(["short text"])[0], atol=1e-5)  # global row = encode
    bread, boat = embedder.encode(["bread dough oven", "sailing boat harbour"])
    assert pooled[0][1] @ bread > pooled[0][1] @ boat and pooled[0][4] @ boat > pooled[0][4] @ bread
    long = "word " * 1000  # beyond one window of 256 words: several windows on one position axis
    windows = embedder.token_windows([long])
    assert len(windows) == 4 and windows[-1].positions[-1] == 1.0
    assert np.all(np.isfinite(embedder.encode_with_coverage([long], chunks=3)[0]))


def test_make_embedder_names_the_hashing_embedder_and_refuses_a_bad_size():
    import pytest

    from fineinstructions.backends.embeddings import make_embedder
    from fineinstructions.errors import ConfigError

    embedder = make_embedder("hashing-sim:48", device="cpu", batch_size=8)
    assert embedder.model_id == "hashing-sim:48" and embedder.dimension == 48 and embedder.batch_size == 8
    for bad in ("hashing-sim:x", "hashing-sim:1"):
        with pytest.raises(ConfigError):
            make_embedder(bad)


def test_the_stage_context_builds_its_embedder_through_the_factory():
    from fineinstructions.backends.embeddings import HashingEmbedder
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

    config = PipelineConfig.model_validate({"queries": {"kind": "sharegpt"}, "documents": {"kind": "wikipedia"},
                                            "match": {"embedder": "hashing-sim:64"}})
    embedder = StageContext(config).embedder
    assert isinstance(embedder, HashingEmbedder) and embedder.dimension == 64
